"""Videos of logged episodes, drawn on the task's model from the log (never inside a control loop).

* A sim log holds each step's physics state (``sim/state``): the video shows exactly what was
  simulated, with the episode's logged domain-randomization draws applied to the model.
* A hardware log has no physics state: the model is posed from the logged readings (the joint
  angles, the valve angle, the cube pose: the task's ``pose_readings``) and goals
  (:meth:`toolkit.contract.task.Task.show`), so the video shows what the real robot did.

Every frame carries the episode index, the step and whether the task counted it a success.
Rendering is headless (:mod:`toolkit.video` picks EGL or OSMesa); encoding is H.264 through the
ffmpeg that the imageio-ffmpeg wheel ships.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from deploy.log import Episode, LogReader
from toolkit.progress import CountProgress

FRAME_SIZE = (320, 240)


class LogVideoError(ValueError):
    """A logged episode cannot be shown (missing readings, no complete step)."""


def missing_readings(task, episode: Episode) -> list[str]:
    """The readings the task needs to pose its model that ``episode`` lacks."""
    have = episode.group("readings")
    return [name for name in task.pose_readings if name not in have]


class EpisodeDrawer:
    """Frames of logged episodes of one log: the task's model (as the log's sim had it), a renderer
    on ``camera`` (default: the task's own) and a scratch state."""

    def __init__(self, reader: LogReader, camera: str | None = None, size: tuple[int, int] = FRAME_SIZE) -> None:
        from deploy.backends.sim import log_simulator
        from toolkit.video import Renderer

        self.reader = reader
        self.camera, self.size = camera, size
        self.task, self.backend = log_simulator(reader, None)
        self.renderer = Renderer(self.backend.model, camera or self.task.camera, width=size[0], height=size[1])

    def frames(self, episode: Episode, on_frame: Callable[[], None] | None = None) -> list[np.ndarray]:
        """One frame per logged step of ``episode``, with its caption."""
        import mujoco

        from deploy.backends.sim import STATE_SPEC, settle_derived
        from toolkit.video import annotate, caption

        if episode.steps == 0:
            raise LogVideoError(f"episode {episode.index} has no complete step to show")
        task, backend = self.task, self.backend
        dr = {k[3:]: v for k, v in episode.reset.items() if k.startswith("dr/")}
        if dr and backend.randomizer is not None:
            backend.apply_randomization(dr)
        model, data = backend.model, backend.data
        states = episode.data.get("sim/state")
        if states is None:
            missing = missing_readings(task, episode)
            if missing:
                raise LogVideoError(f"episode {episode.index} lacks the readings {missing} that task '{task.name}' "
                                    f"needs to pose its model (it needs {list(task.pose_readings)})")
        readings, task_states = episode.group("readings"), episode.group("task_state")
        success = episode.data.get("success")
        out = []
        for k in range(episode.steps):
            if states is not None:
                mujoco.mj_setState(model, data, states[k], STATE_SPEC)
                settle_derived(model, data)
            else:
                mujoco.mj_resetData(model, data)
                task.show(backend.view, {n: v[k][None] for n, v in readings.items()},
                          {n: v[k][None] for n, v in task_states.items()})
                mujoco.mj_forward(model, data)
            done = None if success is None or k == 0 or k - 1 >= len(success) else bool(success[k - 1])
            out.append(annotate(self.renderer.render(data), caption(episode.index, k, episode.steps, done)))
            if on_frame is not None:
                on_frame()
        return out

    def close(self) -> None:
        self.renderer.close()
        self.backend.close()


def write_log_video(log: Path, out: Path, episodes: Sequence[int] | None = None, camera: str | None = None,
                    size: tuple[int, int] = FRAME_SIZE) -> tuple[Path, int]:
    """One mp4 of ``episodes`` (default: every episode that ran) of the log ``log`` at its control
    rate; returns the file and its frame count. Episodes that never ran are skipped."""
    from toolkit.video import VideoWriter

    with LogReader(log) as reader:
        indices = list(range(reader.episode_count)) if episodes is None else list(episodes)
        chosen = [reader.episode(i) for i in indices]
        chosen = [e for e in chosen if e.steps > 0 or episodes is not None]
        if not chosen:
            raise LogVideoError(f"{log} holds no episode with a complete step: nothing to show")
        fps = 1.0 / float(reader.attrs["control_dt"])
        drawer = EpisodeDrawer(reader, camera, size)
        progress = CountProgress("video frames", sum(e.steps for e in chosen))
        try:
            with VideoWriter(out, fps) as writer:
                for episode in chosen:
                    for frame in drawer.frames(episode, on_frame=progress.advance):
                        writer.append(frame)
                count = writer.frames
        finally:
            progress.close()
            drawer.close()
    return out, count
