"""What evaluation videos cost the actor: env steps/s of training with --log.video-interval-s off
and on, in one invocation.

    python -m benchmarks.eval_video_cost --seconds 60 --video-interval-s 10   # the last line is the JSON

Three training runs of the same config back to back, videos off, on, off (the two off runs
bracket the on run, so that a drift of the machine's load shows up as a difference between
them). Videos are rendered in the trainer's process, never in the actor's loop: with the process
placement the actor keeps stepping meanwhile, so the cost is only the CPU the renderer takes
from the roles (on a 2-core machine they share the cores). Rates are the means of the records
after the first 15 s (start-up, warm-up).

JSON keys: task, placement, seconds, video_interval_s, videos_written, env_steps_per_s_off
(mean of both off runs), env_steps_per_s_on, ratio_on_off, v_updates_per_s_off, v_updates_per_s_on,
and the per-run figures in runs.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tyro

from toolkit.config import LogConfig, PlacementKind, TrainConfig
from toolkit.pql.trainer import train
from train.common import task_factory


@dataclass(frozen=True)
class Args:
    """Measure the env steps/s that evaluation videos cost a training run."""

    task: str = "dclaw-turn"
    """Registered task."""
    seconds: float = 60.0
    """Training time of each of the three runs."""
    video_interval_s: float = 10.0
    """--log.video-interval-s of the run with videos."""
    placement: PlacementKind = PlacementKind.process
    """Where the roles run."""


def _rates(run_dir: Path, skip_s: float = 15.0) -> dict[str, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in records if r["wall_time_s"] > skip_s and r["env_steps_per_s"] > 0][:-1] or records
    return {key: sum(r[key] for r in steady) / len(steady) for key in ("env_steps_per_s", "v_updates_per_s")}


def measure(args: Args) -> dict:
    if args.seconds < 20:
        raise ValueError(f"--seconds must be >= 20 (the first 15 s are start-up), got {args.seconds}")
    runs = []
    with tempfile.TemporaryDirectory(prefix="video-cost-") as root:
        for name, interval in (("off", None), ("on", args.video_interval_s), ("off_again", None)):
            cfg = TrainConfig().replace(task=args.task, placement=args.placement, max_time_s=args.seconds,
                                        run_dir=str(Path(root) / name),
                                        log=LogConfig(log_interval_s=5.0, eval_interval_s=1e9, tensorboard=False,
                                                      checkpoint_interval_s=1e9, video_interval_s=interval))
            result = train(cfg, task_factory(cfg.env))
            videos = len(list((result.run_dir / "videos").glob("*.mp4"))) if interval else 0
            runs.append({"name": name, "videos": videos, **_rates(result.run_dir)})
    off = [r for r in runs if r["videos"] == 0 and r["name"] != "on"]
    on = runs[1]
    env_off = sum(r["env_steps_per_s"] for r in off) / len(off)
    return {"task": args.task, "placement": args.placement.value, "seconds": args.seconds,
            "video_interval_s": args.video_interval_s, "videos_written": on["videos"],
            "env_steps_per_s_off": env_off, "env_steps_per_s_on": on["env_steps_per_s"],
            "ratio_on_off": on["env_steps_per_s"] / env_off,
            "v_updates_per_s_off": sum(r["v_updates_per_s"] for r in off) / len(off),
            "v_updates_per_s_on": on["v_updates_per_s"], "runs": runs}


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(Args, args=argv, prog="python -m benchmarks.eval_video_cost")
    result = measure(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
