"""Policy latency at batch 1: the exported ONNX policy on onnxruntime vs torch eager, same policy.

    python -m benchmarks.onnx_latency                          # a freshly initialised actor, dclaw-turn
    python -m benchmarks.onnx_latency --checkpoint runs/turn   # a run's latest checkpoint (or a file)

The policy (normalizer + actor) is exported with ``export.onnx`` into a temporary directory
(verified as usual), then one observation at a time is pushed through (a) ``deploy.policy``'s
``OnnxPolicy`` (what the deployment runner calls: input checks included), (b) the bare
onnxruntime session and (c) the torch module in eager mode under ``inference_mode``
(numpy -> tensor -> numpy included). Both runtimes get ``--threads`` intra-op threads. The sides
are timed in alternating chunks so that they see the same background load on a shared machine.

JSON keys: task, checkpoint, obs_size, action_size, hidden, batch (1), iterations, threads,
onnxruntime_us / onnxruntime_session_us / torch_eager_us ({p50, p99, mean} microseconds per call),
ratio_p50 and ratio_p99 (torch eager / onnxruntime policy: > 1 means onnxruntime is faster),
torch, onnxruntime (versions), exporter.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime
import torch

from deploy.policy import load_policy
from export.onnx import (
    ExportError,
    command,
    export_policy,
    load_exportable,
    prepare,
    random_observations,
    resolve_checkpoint,
)
from robots import make_task
from toolkit.checkpoint import LoadedPolicy
from toolkit.config import PQLConfig
from toolkit.nn import Actor
from toolkit.normalizer import RunningNorm

#: Calls per side before switching to the other side.
_CHUNK = 50


@dataclass(frozen=True)
class Args:
    """Batch-1 latency of an exported policy on onnxruntime against torch eager (JSON)."""

    checkpoint: Path | None = None
    """Run directory or checkpoint file to benchmark (default: a freshly initialised actor)."""
    task: str = "dclaw-turn"
    """Task of the freshly initialised actor (ignored with --checkpoint)."""
    hidden: tuple[int, ...] = PQLConfig().actor_hidden
    """Hidden widths of the freshly initialised actor (ignored with --checkpoint)."""
    iterations: int = 2000
    """Timed calls per side."""
    warmup: int = 200
    """Untimed calls per side first."""
    threads: int = 1
    """Intra-op threads of both torch and onnxruntime."""
    seed: int = 0
    """Seed of the fresh actor and the observations."""
    exporter: Literal["auto", "dynamo", "torchscript"] = "auto"
    """torch.onnx.export flavour (see python -m export.onnx --help)."""


def fresh_policy(task_name: str, hidden: tuple[int, ...], seed: int) -> LoadedPolicy:
    """An untrained actor with a normalizer holding some statistics, as a checkpoint would give it."""
    try:
        task = make_task(task_name)
    except ValueError as error:
        raise ExportError(str(error)) from None
    torch.manual_seed(seed)
    size = task.obs_layout.size
    normalizer = RunningNorm(size)
    spread = torch.linspace(0.1, 2.0, size, dtype=torch.float64)
    normalizer.update(spread * torch.randn(1024, size, dtype=torch.float64))
    return LoadedPolicy(actor=Actor(size, task.robot.num_joints, hidden).eval(), obs_normalizer=normalizer,
                        normalize_obs=True,
                        obs_layout=task.obs_layout, task=task_name, task_overrides={}, run_name="fresh-actor",
                        env_steps=0, checkpoint_path="(freshly initialised actor)")


def run(args: Args) -> dict:
    """Export, then time both runtimes; returns the JSON dict (see the module docstring)."""
    if args.iterations < 1 or args.warmup < 0 or args.threads < 1:
        raise ExportError("--iterations and --threads must be >= 1, --warmup >= 0")
    source = load_exportable(resolve_checkpoint(args.checkpoint)) if args.checkpoint else \
        prepare(fresh_policy(args.task, args.hidden, args.seed))
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        report = export_policy(source, Path(tmp) / "policy.onnx", rollout_steps=5, seed=args.seed,
                               exporter=None if args.exporter == "auto" else args.exporter)
        policy = load_policy(report.path, intra_op_threads=args.threads)
    session, feed, fetch = policy.session, policy.input_name, [policy.output_name]
    obs = random_observations(source.graph, policy.metadata.obs_size, 256, np.random.default_rng(args.seed))
    rows = [np.ascontiguousarray(obs[i:i + 1]) for i in range(len(obs))]
    graph = source.graph

    def torch_eager(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return graph(torch.from_numpy(x)).numpy()

    sides = {"onnxruntime": policy, "onnxruntime_session": lambda x: session.run(fetch, {feed: x})[0],
             "torch_eager": torch_eager}
    for call in sides.values():
        for i in range(args.warmup):
            call(rows[i % len(rows)])
    times = {name: [] for name in sides}
    done = 0
    while done < args.iterations:
        n = min(_CHUNK, args.iterations - done)
        for name, call in sides.items():
            spent = times[name]
            for i in range(done, done + n):
                x = rows[i % len(rows)]
                start = time.perf_counter_ns()
                call(x)
                spent.append(time.perf_counter_ns() - start)
        done += n
    stats = {name: _stats(values) for name, values in times.items()}
    return {
        "task": source.policy.task, "checkpoint": source.policy.checkpoint_path,
        "obs_size": policy.metadata.obs_size, "action_size": policy.metadata.action_size,
        "hidden": list(source.policy.actor.hidden), "batch": 1, "iterations": args.iterations, "threads": args.threads,
        **{f"{name}_us": value for name, value in stats.items()},
        "ratio_p50": round(stats["torch_eager"]["p50"] / stats["onnxruntime"]["p50"], 2),
        "ratio_p99": round(stats["torch_eager"]["p99"] / stats["onnxruntime"]["p99"], 2),
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "exporter": report.exporter,
    }


def _stats(ns: list[int]) -> dict:
    us = np.asarray(ns, dtype=np.float64) / 1e3
    return {"p50": round(float(np.percentile(us, 50)), 2), "p99": round(float(np.percentile(us, 99)), 2),
            "mean": round(float(us.mean()), 2)}


def main(argv: list[str] | None = None) -> int:
    return command(Args, run, lambda args, result: json.dumps(result), "python -m benchmarks.onnx_latency", argv)


if __name__ == "__main__":
    sys.exit(main())
