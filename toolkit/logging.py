"""Run logging: metrics.jsonl (one JSON object per interval), TensorBoard (scalars, eval videos), the
detail of a progress line."""

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

    def video(self, tag: str, frames: list, fps: float, step: int) -> bool:
        """An animated image summary (TensorBoard shows it in its Images tab) of ``frames``
        ((H, W, 3) uint8) at ``step``; False when TensorBoard is off. Encoded as a GIF with
        imageio, as torch's add_video would (which needs moviepy)."""
        if self._writer is None:
            return False
        import io

        import imageio.v3 as iio
        from tensorboard.compat.proto.summary_pb2 import Summary

        buffer = io.BytesIO()
        iio.imwrite(buffer, frames, extension=".gif", duration=1000.0 / fps, loop=0)
        height, width = frames[0].shape[:2]
        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=buffer.getvalue())
        self._writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
        self._writer.flush()
        return True

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def progress_detail(r: dict, metrics: tuple[str, ...] = ()) -> str:
    """What a progress line adds to the time and rates: the measured speed ratios, the training
    episodes' return and success, and the task's episode metrics (training / evaluation)."""

    def num(key, fmt="{:.2f}"):
        value = r.get(key)
        return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else fmt.format(value)

    return (f"a:v 1:{num('critic_per_actor_step', '{:.1f}')} p:v 1:{num('critic_per_policy_update', '{:.1f}')} | "
            f"return {num('episode_return', '{:.1f}')} success {num('episode_success')}"
            + "".join(f" | {m} {num('episode_' + m)} (eval {num('eval_' + m)})" for m in metrics))
