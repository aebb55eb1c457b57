"""Exit statuses of ``python -m deploy.run`` that only a real process shows: termination signals
sent to the whole process group (130, 143, 129), the log writer dying mid-run (7) and usage errors (2).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import h5py
import numpy as np
import pytest

from deploy.errors import ExitCode
from deploy.log import LogReader
from deploy.replay import main as replay_main
from deploy.run import Args, main, run
from tests.deploy.helpers import start_deploy_run, wait_for_logged_steps, writer_pids


def test_a_signal_to_the_process_group_closes_the_log_in_order(make_policy, tmp_path):
    """What a service manager, `timeout` or `kill -- -PGID` does: the signal reaches the control
    process and the log writer alike. The writer ignores it and the control process closes the
    log in order: the run exits 128 + signal, and the file opens with plain h5py (not flagged
    open for writing), holding every step a live reader saw and the episode's outcome. SIGINT
    (Ctrl-C in a terminal), SIGTERM and SIGHUP, one run each, side by side."""
    policy = make_policy()
    runs = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            log = tmp_path / f"{signal.Signals(signum).name}.h5"
            runs[signum] = (log, start_deploy_run("--policy", policy, "--log", log, "--episode-steps", 3000,
                                                  "--control-dt", 0.01, "--rt-priority", 0))
        seen = {signum: wait_for_logged_steps(proc, log, 10) for signum, (log, proc) in runs.items()}
        for signum, (_, proc) in runs.items():
            os.killpg(proc.pid, signum)
        errors = {signum: proc.communicate(timeout=30)[1] for signum, (_, proc) in runs.items()}
    finally:
        for _, proc in runs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    for signum, (log, proc) in runs.items():
        code, err = 128 + signum, errors[signum]
        assert proc.returncode == code, err
        assert f"interrupted by {signal.Signals(signum).name}" in err and "log failed" not in err
        with h5py.File(log, "r") as f:  # refused while the file is still flagged open for writing
            steps = f["episodes/0/obs"].shape[0]
            assert steps >= seen[signum]
            assert f["episodes/0/outcome/status"][()] == code
            assert f["episodes/0/outcome/steps"][()] == steps
            assert np.isfinite(f["episodes/0/obs"][:]).all()


def test_a_log_writer_dying_mid_run_stops_the_run_with_status_7(make_policy, tmp_path, capsys):
    """A run is never continued unlogged: kill the writer process (as a full disk or a crash
    would end it) and the loop stops with exit 7, keeping the steps flushed before."""
    log = tmp_path / "lost.h5"
    killed = []

    def kill_the_writer_once_logging():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            pids = writer_pids()
            if pids and log.exists():
                with contextlib.suppress(Exception):  # between creation and the switch to SWMR
                    with LogReader(log) as live:
                        if live.steps(0) >= 5:
                            os.kill(pids[0], signal.SIGKILL)
                            killed.append(pids[0])
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_writer_once_logging, daemon=True)
    killer.start()
    # Real time at 100 Hz gives the killer 30 s; no overrun watchdog, which a loaded machine could trip first.
    code = run(Args(policy=make_policy(), log=log, episode_steps=3000, control_dt=0.01, rt_priority=0,
                    max_overruns=10**6))
    killer.join(5)
    assert killed, "the writer process was never found"
    assert code == ExitCode.LOG_FAILED
    err = capsys.readouterr().err
    assert "log failed" in err and "the writer process is gone" in err and "rather than continued unlogged" in err
    with LogReader(log) as reader:
        episode = reader.episode(0)
    assert 5 <= episode.steps < 3000
    assert episode.outcome["status"] == -1  # the writer died before it could record the stop


def test_usage_errors_exit_2_naming_the_problem(make_policy, tmp_path, capsys):
    policy = make_policy()
    assert run(Args(policy=policy, episodes=0)) == ExitCode.USAGE
    assert "--episodes must be >= 1" in capsys.readouterr().err
    existing = tmp_path / "existing.h5"
    existing.write_bytes(b"")
    assert run(Args(policy=policy, log=existing)) == ExitCode.USAGE
    assert "exists; choose another --log or pass --overwrite" in capsys.readouterr().err
    assert run(Args(policy=policy, backend="dclaw", realtime=False)) == ExitCode.USAGE
    assert "--no-realtime applies to the sim backend only" in capsys.readouterr().err
    assert run(Args(policy=policy, backend="dclaw", randomize=True)) == ExitCode.USAGE
    assert "--randomize applies to the sim backend only" in capsys.readouterr().err
    assert run(Args(policy=policy, video=tmp_path / "clip.gif")) == ExitCode.USAGE
    assert capsys.readouterr().err.startswith("deploy.run: usage:")
    for argv, cli in ([["--policy", str(policy), "--episodes", "two"], main],
                      [["--policy", str(policy), "--backend", "robot"], main],
                      [[str(existing), "--mode", "rewind"], replay_main]):
        with pytest.raises(SystemExit) as exited:
            cli(argv)
        assert exited.value.code == ExitCode.USAGE, argv


def test_a_stop_signal_inside_the_step_gate_is_raised_when_the_block_ends():
    """The runner logs a step's row and counts the step inside STOP_SIGNAL_GATE: a SIGTERM that
    arrives in between is raised after both, never between them; outside the gate, at once."""
    from deploy.errors import STOP_SIGNAL_GATE, Interrupted
    from deploy.run import signals_as_exceptions

    done = []
    with signals_as_exceptions():
        with pytest.raises(Interrupted, match="SIGTERM"):
            with STOP_SIGNAL_GATE:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the handler has run by now, and deferred
                done.append("row logged and counted")
        assert done == ["row logged and counted"]
        with pytest.raises(Interrupted, match="SIGHUP"):
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
            done.append("never")
    assert done == ["row logged and counted"] and STOP_SIGNAL_GATE.pending is None
