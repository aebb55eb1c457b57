"""Control-loop timing of the deployment runner: period jitter at 10, 50 and 60 Hz on the sim, the
D'Claw backend on the emulated bus, and how many steps a kill -9 of a logging run loses.

    python -m benchmarks.deploy_jitter                      # synthetic policy, 5 s per measurement
    python -m benchmarks.deploy_jitter --policy policy.onnx --seconds 20 --rt-priorities 50 0

The figures the tests do not assert (they depend on the machine's load; the tests check the
behaviour: the loop paces, counters count, every flushed step reads back):

* ``results``: :class:`deploy.runner.Runner` on the MuJoCo sim backend exactly as ``deploy.run``
  runs it (absolute deadlines, sleep then spin, HDF5 log written by its writer process into a
  temporary file) for ``--seconds`` at each of ``--rates``, once per ``--rt-priorities`` entry
  (SCHED_FIFO priority; 0 = normal scheduling).
* ``dclaw_emulator``: the D'Claw backend through dynamixel-sdk against ``python -m
  deploy.dynamixel_emulator`` in its own process, at each of ``--dclaw-rates`` (normal
  scheduling): deadline misses, jitter and the bus transactions' latency.
* ``kill9``: ``python -m deploy.run --log`` at ``--kill-rate-hz``, SIGKILLed (with its writer)
  after ``--kill-after-s``: the steps the loop ran by then (from the log's creation time) against
  the steps the file holds; ``lost_steps`` of 0-1 means the writer keeps up with the loop.

Without ``--policy`` a synthetic ONNX policy of the D'Claw turn task is used (same graph size
class as an exported actor; its actions do not matter for timing).

JSON keys: cpus, loadavg (1/5/15 min, before the runs), policy; results and dclaw_emulator: one
entry per measurement with backend, rate_hz, rt_priority, sched (the policy actually obtained:
SCHED_FIFO or SCHED_OTHER), steps, period_mean_ms, period_trimmed_mean_ms (5 % of each tail
dropped), jitter_p50_ms / jitter_p99_ms / jitter_max_ms (|period - control_dt|), lateness_p99_ms
(wake-up after the deadline), overruns, policy_p50_ms / policy_p99_ms, read_p50_ms / read_p99_ms,
write_p99_ms; kill9: rate_hz, run_s, expected_steps, logged_steps, lost_steps. The machine is
usually shared: compare runs made together, and read p99 under the load figures printed with them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import tyro

from deploy.backends.sim import SimBackend
from deploy.log import LogFormatError, LogReader, LogWriter
from deploy.policy import load_policy
from deploy.runner import Runner, RunnerConfig
from deploy.testing import synthetic_policy, task_metadata
from robots import make_task


@dataclass
class Args:
    """Measure the deployment loop's timing (sim at several rates, the D'Claw backend on the emulated bus) and
    the steps a kill -9 of a logging run loses; prints JSON."""

    policy: Path | None = None
    """ONNX policy (default: a synthetic 256-256 policy for dclaw-turn)."""
    rates: tuple[float, ...] = (10.0, 50.0, 60.0)
    """Control rates to measure on the sim (Hz)."""
    seconds: float = 5.0
    """Duration of each measurement."""
    rt_priorities: tuple[int, ...] = (50, 0)
    """SCHED_FIFO priorities to try (0: normal scheduling)."""
    log: bool = True
    """Write the HDF5 log (as a deployment does) while measuring."""
    dclaw_rates: tuple[float, ...] = (10.0, 20.0)
    """Control rates of the D'Claw backend on the emulated bus (Hz); empty: skip."""
    kill_rate_hz: float = 50.0
    """Rate of the kill -9 measurement (0: skip it)."""
    kill_after_s: float = 2.0
    """Seconds of logged running before the kill -9."""


def fifo_available(priority: int) -> bool:
    """Whether this process may use SCHED_FIFO ``priority`` (probed and undone)."""
    if priority <= 0 or not hasattr(os, "sched_setscheduler"):
        return False
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError:
        return False
    os.sched_setscheduler(0, policy, param)
    return True


def timing_figures(result, dt: float) -> dict:
    """The loop's timing statistics (ms) of one :class:`deploy.runner.EpisodeResult`."""
    t = result.timing
    period = t["period"][1:] * 1e3
    jitter = np.abs(period - dt * 1e3)
    trim = len(period) // 20
    trimmed = np.sort(period)[trim:len(period) - trim]

    def pct(values, q):
        return round(float(np.percentile(values, q)), 4)

    return {
        "steps": result.steps, "period_mean_ms": round(float(period.mean()), 4),
        "period_trimmed_mean_ms": round(float(trimmed.mean()), 4),
        "jitter_p50_ms": pct(jitter, 50), "jitter_p99_ms": pct(jitter, 99),
        "jitter_max_ms": round(float(jitter.max()), 4),
        "lateness_p99_ms": pct(t["lateness"] * 1e3, 99), "overruns": result.overruns,
        "policy_p50_ms": pct(t["policy_latency"] * 1e3, 50), "policy_p99_ms": pct(t["policy_latency"] * 1e3, 99),
        "read_p50_ms": pct(t["read_latency"] * 1e3, 50), "read_p99_ms": pct(t["read_latency"] * 1e3, 99),
        "write_p99_ms": pct(t["write_latency"] * 1e3, 99),
    }


def measure(policy_path: Path, rate: float, seconds: float, rt_priority: int, log: bool, workdir: Path,
            port: str | None = None) -> dict:
    """One timed episode on the sim backend, or on the D'Claw backend at ``port``."""
    policy = load_policy(policy_path)
    task = make_task(policy.metadata.task, **policy.metadata.task_overrides)
    dt = 1.0 / rate
    steps = max(10, round(seconds * rate))
    if port is None:
        backend = SimBackend(task, dt)
    else:
        from deploy.backends.dclaw_dynamixel import DClawBackend

        backend = DClawBackend(task, port, control_dt=dt, reset_speed=3.0)
    backend.open()
    path = workdir / f"jitter_{backend.name}_{rate:g}hz_rt{rt_priority}.h5"
    factory = (lambda step, episode: LogWriter(path, 1, step, episode, {}, overwrite=True)) if log else None
    runner = Runner(policy, backend, RunnerConfig(episode_steps=steps, control_dt=dt, rt_priority=rt_priority,
                                                  max_overruns=10**9), log_factory=factory)
    try:
        (result,) = runner.run()
    finally:
        if runner.log is not None:
            runner.log.close()
        backend.close()
    return {"backend": backend.name, "rate_hz": rate, "rt_priority": rt_priority,
            "sched": "SCHED_FIFO" if rt_priority > 0 and fifo_available(rt_priority) else "SCHED_OTHER",
            **timing_figures(result, dt)}


def measure_dclaw_emulator(policy_path: Path, rates, seconds: float, log: bool, workdir: Path) -> list[dict]:
    """The D'Claw backend against the emulator in its own process (as a dry run uses it)."""
    root = Path(__file__).resolve().parents[1]
    emulator = subprocess.Popen([sys.executable, "-m", "deploy.dynamixel_emulator"], cwd=root, text=True,
                                env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
    try:
        port = emulator.stdout.readline().strip()
        if not port.startswith("/dev/"):
            raise RuntimeError("the Dynamixel emulator did not start")
        return [measure(policy_path, rate, seconds, 0, log, workdir, port=port) for rate in rates]
    finally:
        emulator.send_signal(signal.SIGINT)
        try:
            emulator.wait(10)
        except subprocess.TimeoutExpired:
            emulator.kill()
            emulator.wait()


def measure_kill9(policy_path: Path, rate: float, after_s: float, workdir: Path) -> dict:
    """Steps a logging run had run when it was SIGKILLed (with its writer) vs steps in its file."""
    root = Path(__file__).resolve().parents[1]
    path = workdir / "kill9.h5"
    proc = subprocess.Popen([sys.executable, "-m", "deploy.run", "--policy", str(policy_path), "--log", str(path),
                             "--episode-steps", str(round((after_s + 60) * rate)), "--control-dt", str(1.0 / rate)],
                            cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:  # until the first step is in the file, then run for after_s more
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the logging run did not start")
            try:
                with LogReader(path) as live:
                    if live.steps(0) > 0:
                        break
            except (LogFormatError, KeyError, OSError):
                pass
            time.sleep(0.05)
        time.sleep(after_s)
        os.killpg(proc.pid, signal.SIGKILL)
        killed_at = time.time()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with LogReader(path) as reader:
        created = datetime.fromisoformat(reader.attrs["created"]).timestamp()
        logged = reader.steps(0)
    expected = (killed_at - created) * rate
    return {"rate_hz": rate, "run_s": round(killed_at - created, 3), "expected_steps": round(expected, 1),
            "logged_steps": logged, "lost_steps": round(expected - logged, 1)}


def main(argv: list[str] | None = None) -> dict:
    args = tyro.cli(Args, args=argv, prog="python -m benchmarks.deploy_jitter")
    report = {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        policy = args.policy
        if policy is None:
            task = make_task("dclaw-turn")
            policy = synthetic_policy(workdir / "synthetic.onnx", task_metadata(task), hidden=256)
        report["policy"] = str(args.policy or "synthetic dclaw-turn (hidden 256)")
        report["results"] = [measure(policy, rate, args.seconds, priority, args.log, workdir)
                             for rate in args.rates for priority in args.rt_priorities]
        if args.dclaw_rates:
            report["dclaw_emulator"] = measure_dclaw_emulator(policy, args.dclaw_rates, args.seconds, args.log,
                                                              workdir)
        if args.kill_rate_hz > 0:
            report["kill9"] = measure_kill9(policy, args.kill_rate_hz, args.kill_after_s, workdir)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
