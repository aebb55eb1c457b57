"""Run logging: metrics.jsonl (one JSON object per interval), TensorBoard, a progress line."""

from __future__ import annotations

import json
import math
from pathlib import Path


class RunLogger:
    """Appends records to ``<run_dir>/metrics.jsonl`` and, optionally, TensorBoard events."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = self.path.open("a", buffering=1)
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(run_dir))

    def log(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        if self._writer is not None:
            step = int(record.get("env_steps", 0))
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "env_steps" and math.isfinite(value):
                    self._writer.add_scalar(key, value, step)
            self._writer.flush()

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}"


def progress_line(r: dict, metrics: tuple[str, ...] = ()) -> str:
    """One human line per log interval; ``metrics`` adds the task's episode metrics (train/eval)."""

    def num(key, fmt="{:.2f}"):
        value = r.get(key)
        return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else fmt.format(value)

    return (f"[{r['wall_time_s']:7.0f}s] env {_si(r['env_steps'])} ({_si(r['env_steps_per_s'])}/s) | "
            f"V {_si(r['v_updates'])} ({r['v_updates_per_s']:.0f}/s) P {_si(r['p_updates'])} "
            f"({r['p_updates_per_s']:.0f}/s) | a:v 1:{num('critic_per_actor_step', '{:.1f}')} "
            f"p:v 1:{num('critic_per_policy_update', '{:.1f}')} | return {num('episode_return', '{:.1f}')} "
            f"success {num('episode_success')} | eval {num('eval_success')}"
            + "".join(f" | {m} {num('episode_' + m)} (eval {num('eval_' + m)})" for m in metrics))
