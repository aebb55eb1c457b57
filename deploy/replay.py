"""Replay a logged episode in simulation.

    python -m deploy.replay episodes.h5 --episode 3 --mode state
    python -m deploy.replay episodes.h5 --episode 3 --mode actions --plot replay.png
    python -m deploy.replay real.h5 --episode 2 --video ep2.mp4

``--mode state``: for every logged step, put the simulator in the logged physics state
(``sim/state``; a hardware log has none, then the logged sensor readings are used), recompute the
observation with the task's own code and compare it with the logged one (max abs difference).
It checks that what the policy saw is what the task defines - the deployment and training
observation paths agree.

``--mode actions``: start the simulator from the logged initial state (sim log: the exact
physics state; hardware log: the logged joint angles, the rest at the model's defaults) with the
logged domain-randomization values, re-execute the logged joint targets open loop and report
the per-step divergence of the joint positions from the logged ones. For a sim log this is ~0
(MuJoCo is deterministic); for a hardware log it measures the sim-to-real gap.

``--video out.mp4``: the episode on the robot model (a hardware log is posed from its readings);
with ``--mode actions`` the re-executed sim beside it.

``--plot out.png``: joint positions vs targets, actions and the loop-period histogram (plus the
divergence in actions mode), drawn with matplotlib's Agg backend.

Exit status: 0 replayed (state mode: max difference within ``--tolerance``), 1 state mode found
observations differing by more than ``--tolerance``, 2 unusable file or options (the message names
the problem: missing, truncated, not HDF5, not a deployment log, no such episode, an episode that
never ran, one without a complete step).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

from deploy.log import Episode, LogFormatError, LogReader


@dataclass
class Args:
    """Replay a logged episode in simulation: recompute observations from logged states (state) or
    re-execute logged joint targets open loop (actions), optionally plotting the episode. Exit status: 0 replayed,
    1 state mode found observations beyond --tolerance, 2 unusable file or episode (the message says which)."""

    file: tyro.conf.Positional[Path]
    """HDF5 log written by `python -m deploy.run` (also while it is being written, or after a crash)."""
    episode: int = 0
    """Episode index in the log."""
    mode: Literal["state", "actions"] = "state"
    """`state`: recompute observations from the logged states; `actions`: open-loop re-execution of the targets."""
    plot: Path | None = None
    """Write a figure (PNG/PDF/SVG) of joint positions vs targets, actions and loop timing."""
    tolerance: float = 1e-4
    """state mode: largest accepted |recomputed - logged| observation difference."""
    video: Path | None = None
    """Write an mp4 of the episode on the robot model (sim logs: the logged states; hardware logs: posed from the
    logged readings). With --mode actions the re-executed sim is drawn beside the logged episode."""
    camera: str | None = None
    """Camera of the task's scene for --video (default: the task's own)."""


@dataclass
class ReplayReport:
    """Result of a replay; ``per_step`` is the per-step max abs difference (obs or joint_pos)."""

    mode: str
    episode: int
    steps: int
    source: str
    per_step: np.ndarray
    replayed_joint_pos: np.ndarray | None = None

    @property
    def max_diff(self) -> float:
        return float(np.max(self.per_step)) if len(self.per_step) else 0.0


def replay_state(reader: LogReader, episode: Episode) -> ReplayReport:
    """Recompute every logged observation (from the physics state, or else the readings)."""
    import mujoco

    from deploy.backends.sim import STATE_SPEC, log_simulator, settle_derived

    task, backend = log_simulator(reader, episode)
    steps = episode.steps
    targets, actions = episode["joint_targets"], episode["actions"].astype(np.float64)
    previous_targets = np.vstack([episode.reset["joint_targets"][None], targets[:-1]])
    previous_actions = np.vstack([np.zeros((1, actions.shape[1])), actions[:-1]])
    task_states = episode.group("task_state")
    logged_readings = episode.group("readings")
    # A randomized sim's observation noise: logged readings as observed minus as measured.
    noise = {name: value - logged_readings[name] for name, value in episode.group("observed_readings").items()}
    has_state = "sim/state" in episode.data
    diff = np.zeros(steps)
    for k in range(steps):
        if has_state:
            mujoco.mj_setState(backend.model, backend.data, episode["sim/state"][k], STATE_SPEC)
            settle_derived(backend.model, backend.data)
            readings, _ = backend.read()
        else:
            readings = {name: value[k][None] for name, value in logged_readings.items()}
        readings = {name: value + noise[name][k] if name in noise else value for name, value in readings.items()}
        state = {name: value[k][None] for name, value in task_states.items()}
        obs = task.observe(readings, state, previous_targets[k][None], previous_actions[k][None]).astype(np.float32)
        diff[k] = np.max(np.abs(obs[0].astype(np.float64) - episode["obs"][k]))
    return ReplayReport("state", episode.index, steps, "sim state" if has_state else "logged readings", diff)


def replay_actions(reader: LogReader, episode: Episode, on_step=None) -> ReplayReport:
    """Re-execute the logged joint targets open loop from the logged initial state.

    ``on_step(data, k)``, when given, sees the re-executed simulation before each step's command
    (the video draws it there)."""
    import mujoco

    from deploy.backends.sim import STATE_SPEC, log_simulator, settle_derived

    task, backend = log_simulator(reader, episode)
    model, data = backend.model, backend.data
    if "sim/state" in episode.data:
        mujoco.mj_setState(model, data, episode["sim/state"][0], STATE_SPEC)
        source = "logged sim state"
    else:
        mujoco.mj_resetData(model, data)
        readings = episode.group("readings")
        if all(name in readings for name in task.pose_readings):  # the robot and its object as logged
            task.show(backend.view, {n: v[0][None] for n, v in readings.items()},
                      {n: v[0][None] for n, v in episode.group("task_state").items()})
            source = f"logged {', '.join(task.pose_readings)} (other state at model defaults)"
        else:
            data.qpos[task.indices.qpos_adr] = readings["joint_pos"][0]
            source = "logged joint angles (other state at model defaults)"
    backend.start_commands(episode.reset["joint_targets"])
    settle_derived(model, data)
    logged = episode["readings/joint_pos"]
    replayed = np.zeros_like(logged)
    states = episode.data.get("sim/state")
    scratch = mujoco.MjData(model)
    for k in range(episode.steps):
        readings, _ = backend.read()
        replayed[k] = readings["joint_pos"][0]
        if on_step is not None:
            on_step(data, k)
        forces = None
        if states is not None and k + 1 < episode.steps:
            # The forces the logged step applied (DR pushes) are in force at the next logged state.
            mujoco.mj_setState(model, scratch, states[k + 1], STATE_SPEC)
            forces = scratch.xfrc_applied
        backend.advance(episode["joint_targets"][k], forces)
    diff = np.max(np.abs(replayed - logged), axis=1) if episode.steps else np.zeros(0)
    return ReplayReport("actions", episode.index, episode.steps, source, diff, replayed)


def plot_episode(episode: Episode, control_dt: float, out: Path, report: ReplayReport | None = None) -> None:
    """Joint positions vs targets, actions, loop-period histogram (and divergence) to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    time = episode["time"]
    panels = 4 if report is not None and report.mode == "actions" else 3
    fig, axes = plt.subplots(panels, 1, figsize=(10, 3 * panels), constrained_layout=True)
    pos, target = episode["readings/joint_pos"], episode["joint_targets"]
    colors = plt.cm.tab10(np.arange(pos.shape[1]) % 10)
    for j in range(pos.shape[1]):
        axes[0].plot(time, pos[:, j], color=colors[j], lw=1.2)
        axes[0].step(time, target[:, j], where="post", color=colors[j], lw=0.8, ls="--")
    axes[0].set(title=f"episode {episode.index}: joint position (solid) vs target (dashed)", ylabel="rad")
    axes[1].plot(time, episode["actions"], lw=0.9)
    axes[1].set(title="actions", ylabel="[-1, 1]", xlabel="time (s)")
    period = episode["timing/period"][1:] * 1e3
    period = period[np.isfinite(period)]
    axes[2].hist(period, bins=40, color="tab:gray")
    axes[2].axvline(control_dt * 1e3, color="tab:red", lw=1, label=f"target {control_dt * 1e3:g} ms")
    if len(period):
        jitter = np.abs(period - control_dt * 1e3)
        axes[2].set_title(f"loop period: p50 jitter {np.percentile(jitter, 50):.3f} ms, "
                          f"p99 {np.percentile(jitter, 99):.3f} ms, misses {int(episode['timing/overrun'].sum())}")
    axes[2].set(xlabel="period (ms)", ylabel="steps")
    axes[2].legend()
    if panels == 4:
        axes[3].semilogy(np.arange(report.steps), np.maximum(report.per_step, 1e-12))
        axes[3].set(title=f"open-loop replay divergence, max |q_replay - q_logged| ({report.source})",
                    xlabel="step", ylabel="rad")
    fig.savefig(out, dpi=90)
    plt.close(fig)


def run(args: Args) -> int:
    """Everything ``main`` does; returns the exit status."""
    try:
        reader = LogReader(args.file)
    except LogFormatError as error:
        print(f"deploy.replay: {error}", file=sys.stderr)
        return 2
    with reader:
        try:  # an episode the session never reached, or one without a complete step, is named as such
            episode = reader.episode_with_steps(args.episode)
        except LogFormatError as error:
            print(f"deploy.replay: {error}", file=sys.stderr)
            return 2
        status = int(episode.outcome["status"])
        ended = "not finished (writer killed or still running)" if status < 0 else \
            f"status {status}: {episode.outcome['message']}"
        print(f"deploy.replay: {args.file} episode {args.episode}: {episode.steps} steps, {ended}")
        drawer = replayed_frames = None
        if args.video is not None:
            from deploy.video import EpisodeDrawer, LogVideoError
            from toolkit.video import GLUnavailableError, check_video_path

            try:
                check_video_path(args.video)
                drawer = EpisodeDrawer(reader, args.camera)
                logged_frames = drawer.frames(episode)
            except (ValueError, GLUnavailableError, LogVideoError) as error:
                print(f"deploy.replay: video: {error}", file=sys.stderr)
                return 2
        if args.mode == "state":
            report = replay_state(reader, episode)
        else:
            replayed_frames = [] if drawer is not None else None
            record = None if drawer is None else (lambda data, k: replayed_frames.append(drawer.renderer.render(data)))
            report = replay_actions(reader, episode, on_step=record)
        if drawer is not None:
            _write_replay_video(args.video, logged_frames, replayed_frames, float(reader.attrs["control_dt"]))
            drawer.close()
            print(f"deploy.replay: wrote {args.video} ({len(logged_frames)} frames)")
        control_dt = float(reader.attrs["control_dt"])
        if args.plot is not None:
            plot_episode(episode, control_dt, args.plot, report)
            print(f"deploy.replay: wrote {args.plot}")
    if report.mode == "state":
        worst = int(np.argmax(report.per_step))
        print(f"state replay ({report.source}): max |obs - logged obs| = {report.max_diff:.3e} over {report.steps} "
              f"steps (worst step {worst}; tolerance {args.tolerance:g})")
        return 0 if report.max_diff <= args.tolerance else 1
    print(f"actions replay from {report.source}: per-step max |joint_pos - logged| (rad)")
    stride = max(1, report.steps // 20)
    for k in range(0, report.steps, stride):
        print(f"  step {k:4d}  {report.per_step[k]:.3e}")
    print(f"max divergence {report.max_diff:.3e} rad, final {report.per_step[-1]:.3e} rad over {report.steps} steps")
    return 0


def _write_replay_video(path: Path, logged: list, replayed: list | None, control_dt: float) -> None:
    """The logged episode's frames, or (actions mode) the re-executed sim beside them."""
    from toolkit.video import VideoWriter, side_by_side

    with VideoWriter(path, 1.0 / control_dt) as writer:
        for k, frame in enumerate(logged):
            writer.append(frame if replayed is None else side_by_side(replayed[k], frame, ("re-executed sim", "log")))


def main(argv: list[str] | None = None) -> int:
    return run(tyro.cli(Args, args=argv, prog="python -m deploy.replay"))


if __name__ == "__main__":
    sys.exit(main())
