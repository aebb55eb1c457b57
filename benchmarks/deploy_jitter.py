"""Control-loop timing of the deployment runner: period jitter at 10 and 60 Hz.

    python -m benchmarks.deploy_jitter                      # synthetic policy, 10 and 60 Hz, 5 s each
    python -m benchmarks.deploy_jitter --policy policy.onnx --seconds 20 --rt-priorities 50 0

Runs :class:`deploy.runner.Runner` on the MuJoCo sim backend exactly as ``deploy.run`` does
(absolute deadlines, sleep then spin, HDF5 log written by its thread into a temporary file) for
``--seconds`` at each rate, once per ``--rt-priorities`` entry (SCHED_FIFO priority; 0 = normal
scheduling). Without ``--policy`` a synthetic ONNX policy of the D'Claw turn task is used (same
graph size class as an exported actor; its actions do not matter for timing).

JSON keys: cpus, loadavg (1/5/15 min, before the runs), policy, results: one entry per rate and
priority with rate_hz, rt_priority, sched (the policy actually obtained: SCHED_FIFO or
SCHED_OTHER), steps, period_mean_ms, jitter_p50_ms / jitter_p99_ms / jitter_max_ms
(|period - control_dt|), lateness_p99_ms (wake-up after the deadline), overruns,
policy_p50_ms / policy_p99_ms, read_p99_ms. The machine is usually shared: compare runs made
together, and read p99 under the load figures printed with them.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from deploy.backends.sim import SimBackend
from deploy.log import LogWriter
from deploy.policy import load_policy
from deploy.runner import Runner, RunnerConfig
from deploy.testing import synthetic_policy, task_metadata
from robots import make_task


@dataclass
class Args:
    """Measure the deployment loop's period jitter on the sim backend (prints JSON)."""

    policy: Path | None = None
    """ONNX policy (default: a synthetic 256-256 policy for dclaw-turn)."""
    rates: tuple[float, ...] = (10.0, 60.0)
    """Control rates to measure (Hz)."""
    seconds: float = 5.0
    """Duration of each measurement."""
    rt_priorities: tuple[int, ...] = (50, 0)
    """SCHED_FIFO priorities to try (0: normal scheduling)."""
    log: bool = True
    """Write the HDF5 log (as a deployment does) while measuring."""


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


def measure(policy_path: Path, rate: float, seconds: float, rt_priority: int, log: bool, workdir: Path) -> dict:
    policy = load_policy(policy_path)
    task = make_task(policy.metadata.task, **policy.metadata.task_overrides)
    dt = 1.0 / rate
    steps = max(10, round(seconds * rate))
    backend = SimBackend(task, dt)
    backend.open()
    path = workdir / f"jitter_{rate:g}hz_rt{rt_priority}.h5"
    factory = (lambda step, episode: LogWriter(path, 1, step, episode, {}, overwrite=True)) if log else None
    runner = Runner(policy, backend, RunnerConfig(episode_steps=steps, control_dt=dt, rt_priority=rt_priority,
                                                  max_overruns=10**9), log_factory=factory)
    try:
        (result,) = runner.run()
    finally:
        if runner.log is not None:
            runner.log.close()
        backend.close()
    t = result.timing
    period = t["period"][1:] * 1e3
    jitter = np.abs(period - dt * 1e3)

    def pct(values, q):
        return round(float(np.percentile(values, q)), 4)

    return {
        "rate_hz": rate, "rt_priority": rt_priority,
        "sched": "SCHED_FIFO" if rt_priority > 0 and fifo_available(rt_priority) else "SCHED_OTHER",
        "steps": result.steps, "period_mean_ms": round(float(period.mean()), 4),
        "jitter_p50_ms": pct(jitter, 50), "jitter_p99_ms": pct(jitter, 99),
        "jitter_max_ms": round(float(jitter.max()), 4),
        "lateness_p99_ms": pct(t["lateness"] * 1e3, 99), "overruns": result.overruns,
        "policy_p50_ms": pct(t["policy_latency"] * 1e3, 50), "policy_p99_ms": pct(t["policy_latency"] * 1e3, 99),
        "read_p99_ms": pct(t["read_latency"] * 1e3, 99),
    }


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
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
