"""Helpers of the deployment tests that drive real processes: ``python -m deploy.run`` in its own
process group, a live reader waiting for its log to grow, and the log writer processes of this
test process (to kill one mid-run)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from deploy.log import LogFormatError, LogReader
from tests.deploy.conftest import REPO


def start_deploy_run(*args) -> subprocess.Popen:
    """``python -m deploy.run ARGS`` in a new session (its own process group, like a service), text pipes.
    The overrun watchdog is effectively off: on a loaded machine a real-time loop may overrun, and
    what these runs test is signals and logging, not timing (the watchdog has its own tests)."""
    args = ("--max-overruns", 1_000_000, *args)
    return subprocess.Popen([sys.executable, "-m", "deploy.run", *map(str, args)], cwd=REPO, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_logged_steps(proc: subprocess.Popen, log: Path, steps: int, timeout: float = 60.0) -> int:
    """Poll ``log`` with a live reader until episode 0 has ``steps`` complete steps; returns how
    many it saw. Fails if the run ends first (with its stderr) or the log does not grow in time."""
    seen, deadline = 0, time.monotonic() + timeout
    while seen < steps:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (status {proc.returncode}) before logging {steps} steps: "
                                 f"{proc.stderr.read()}")
        assert time.monotonic() < deadline, f"the run did not log {steps} steps within {timeout:g} s"
        if log.exists():
            try:
                with LogReader(log) as live:
                    seen = live.steps(0)
            except (LogFormatError, KeyError, OSError):
                pass  # caught between file creation and the switch to SWMR
        time.sleep(0.05)
    return seen


def writer_pids() -> list[int]:
    """PIDs of the log writer processes this process started (children running deploy.log)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == os.getpid() and b"deploy.log" in cmdline and b"_writer_main" in cmdline:
            pids.append(int(entry.name))
    return pids
