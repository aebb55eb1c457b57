"""Run an exported policy at control rate on the evaluation sim or the D'Claw, logging to HDF5.

    python -m deploy.run --policy policy.onnx --backend sim --episodes 10 --log episodes.h5 [--randomize]
    python -m deploy.run --policy policy.onnx --backend dclaw --port /dev/ttyUSB0 --log episodes.h5
    python -m deploy.run --policy policy.onnx --backend sim --episodes 3 --video eval.mp4

Prints each episode's success, return and loop timing (mean/p99 period, jitter, deadline misses,
policy and sensor-read latency). The policy's metadata is checked against the backend's robot and
the task's current observation layout before anything moves. Exit statuses (see
:mod:`deploy.errors`): 0 ok, 2 usage, 3 policy refused, 4 hardware fault, 5 NaN/inf observation
or action, 6 watchdog overruns, 7 log write failed, 130/143/129 interrupted (SIGINT/TERM/HUP).
Whatever happens, the backend is closed in a ``finally`` (D'Claw: torque off on every servo).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

import toolkit
from deploy.backends.base import Backend
from deploy.errors import STOP_SIGNAL_GATE, DeployError, ExitCode, LogError, PolicyMismatchError
from deploy.log import LogWriter
from deploy.policy import load_policy
from deploy.runner import EpisodeResult, Runner, RunnerConfig, check_policy
from toolkit.contract.calibration import Calibration, CalibrationError, load_calibration
from toolkit.contract.policy import PolicyError, encode_metadata
from toolkit.progress import eta_s, format_duration


@dataclass
class Args:
    """Run an exported ONNX policy at control rate on the evaluation sim or the D'Claw hardware,
    logging every step to an HDF5 file. Exit status: 0 ok, 2 usage, 3 policy refused, 4 hardware
    fault, 5 NaN/inf observation or action, 6 watchdog overruns, 7 log failed, 130 interrupted."""

    policy: Path
    """ONNX policy written by `python -m export.onnx`."""
    backend: Literal["sim", "dclaw"] = "sim"
    """Where to run: `sim` (the task's MuJoCo scene) or `dclaw` (Dynamixel servos on --port)."""
    log: Path | None = None
    """HDF5 session log to create (SWMR, flushed every step). Refused if it exists, unless --overwrite."""
    overwrite: bool = False
    """Replace an existing --log file."""
    episodes: int = 1
    """Episodes to run."""
    episode_steps: int | None = None
    """Control steps per episode (default: the task's episode length)."""
    seed: int = 0
    """Seed of the episodes' goals, initial states and domain randomization."""
    randomize: bool = False
    """sim: domain randomization as in training: the task's DR ranges drawn per episode (physics), action noise
    and latency, observation noise and pushes."""
    goal: float | None = None
    """Fixed goal angle (rad) for the valve task instead of the task's reset distribution."""
    port: str = "/dev/ttyUSB0"
    """dclaw: serial port of the Dynamixel bus (U2D2), or an emulator's pty."""
    baud: int = 1_000_000
    """dclaw: bus baud rate."""
    reset_speed: float = 0.6
    """dclaw: speed (rad/s) of the move to the default pose before each episode."""
    reset_timeout: float = 10.0
    """dclaw: seconds allowed to reach the default pose."""
    max_overruns: int = 5
    """Watchdog: stop after this many consecutive control steps overran their period."""
    max_stale_reads: int = 3
    """Watchdog: stop after this many consecutive reads without new sensor data."""
    control_dt: float | None = None
    """Override the control period (s). For timing tests only: the policy was trained at its own rate."""
    spin_ms: float = 1.0
    """Busy-wait this long before each deadline instead of sleeping (sleep overshoots)."""
    realtime: bool = True
    """Pace steps at the control rate. `--no-realtime` (sim only) runs as fast as possible for evaluation."""
    rt_priority: int = 50
    """SCHED_FIFO priority of the control loop (needs root/CAP_SYS_NICE; falls back with a warning). 0: off."""
    video: Path | None = None
    """Write an mp4 of the session's episodes (episode, step and success burned in), rendered from the log after the
    session: never inside the control loop, so the loop timing is unchanged."""
    camera: str | None = None
    """Camera of the task's scene for --video (default: the task's own, which frames the robot and its object)."""
    calibration: Path | None = None
    """A calibration file (python -m deploy.calibrate). sim: evaluate in the fitted sim (its damping, gain and friction
    scales and action latency); dclaw: the servos' fitted zero offsets when converting ticks and radians. Refused for
    another robot or task."""


def make_backend(args: Args, task, control_dt: float, calibration: Calibration | None = None) -> Backend:
    """The backend ``args`` ask for (imported lazily: no MuJoCo on the hardware path and vice versa)."""
    if args.backend == "sim":
        from deploy.backends.sim import SimBackend

        return SimBackend(task, control_dt, randomize=args.randomize, calibration=calibration)
    if args.randomize:
        raise ValueError("--randomize applies to the sim backend only")
    if not args.realtime:
        raise ValueError("--no-realtime applies to the sim backend only: hardware runs at its control rate")
    from deploy.backends.dclaw_dynamixel import DClawBackend

    return DClawBackend(task, args.port, args.baud, control_dt=control_dt, reset_speed=args.reset_speed,
                        reset_timeout=args.reset_timeout,
                        joint_offsets=None if calibration is None else calibration.joint_offsets)


@contextlib.contextmanager
def signals_as_exceptions():
    """SIGINT/SIGTERM/SIGHUP raise :class:`Interrupted` in the main thread, so ``finally`` blocks
    (torque off, log close) run on Ctrl-C, ``kill`` and a closed terminal alike."""

    def handler(signum, frame):
        STOP_SIGNAL_GATE.interrupt(signum)

    signals = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def signals_ignored():
    """Shield a cleanup (torque off) from a second Ctrl-C."""
    signals = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def format_episode(result: EpisodeResult, control_dt: float) -> str:
    s = result.summary(control_dt)
    success = {True: "yes", False: "no", None: "-"}[result.success]
    line = (f"episode {result.index}: success {success:3s} return {result.episode_return:9.2f} "
            f"steps {result.steps:4d} | period {s['period_mean_ms']:.2f} ms (p99 {s['period_p99_ms']:.2f}) "
            f"jitter p99 {s['jitter_p99_ms']:.2f} ms"
            f" | deadline misses {s['overruns']} | policy {s['policy_mean_ms']:.2f} ms (p99 {s['policy_p99_ms']:.2f})"
            f" | read {s['read_mean_ms']:.2f} ms (p99 {s['read_p99_ms']:.2f})")
    if result.metrics:
        line += "".join(f" | {name} {value:g}" for name, value in result.metrics.items())
    if result.terminated:
        line += " | terminated by the task"
    if result.status:
        line += f" | stopped: {result.message.splitlines()[0]}"
    return line


def session_attrs(args: Args, metadata, backend: Backend, runner: Runner) -> dict:
    """Root attributes of the log: what ran, where, at which rate, with which policy."""
    attrs = {
        "backend": backend.name, "backend_info": backend.info(), "robot": metadata.robot.name, "task": metadata.task,
        "control_dt": runner.control_dt, "rate_hz": 1.0 / runner.control_dt, "episode_steps": runner.episode_steps,
        "seed": args.seed, "randomize": args.randomize, "max_overruns": args.max_overruns,
        "max_stale_reads": args.max_stale_reads, "max_joint_speed": backend.robot.max_joint_speed,
        "policy_file": str(args.policy), "policy_metadata": encode_metadata(metadata),
        "schema_hash": metadata.schema_hash, "run_name": metadata.run_name, "training_step": metadata.training_step,
        "task_overrides": metadata.task_overrides, "toolkit_version": toolkit.__version__,
        "command": " ".join(sys.argv), "host": socket.gethostname(), "task_state_override": runner.cfg.task_state,
    }
    if args.randomize:
        attrs["dr_table"] = asdict(backend.task.dr_table())
    return attrs


def run(args: Args) -> int:
    """Everything ``main`` does, returning the exit status (see :class:`deploy.errors.ExitCode`)."""
    from robots import make_task

    def fail(code: ExitCode, kind: str, message) -> int:
        print(f"deploy.run: {kind}: {message}", file=sys.stderr)
        return int(code)

    if args.episodes < 1:
        return fail(ExitCode.USAGE, "usage", f"--episodes must be >= 1, got {args.episodes}")
    if args.log is not None:
        if args.log.exists() and not args.overwrite:
            return fail(ExitCode.USAGE, "usage",
                        f"log file {args.log} exists; choose another --log or pass --overwrite")
        if not os.access(args.log.parent if str(args.log.parent) else ".", os.W_OK):
            return fail(ExitCode.LOG_FAILED, "log failed",
                        f"cannot create {args.log}: directory {args.log.parent} does not exist or is not writable")
    try:
        policy = load_policy(args.policy)
    except PolicyError as error:
        return fail(ExitCode.POLICY_MISMATCH, "policy refused", error)
    metadata = policy.metadata
    try:
        task = make_task(metadata.task, **metadata.task_overrides)
    except (TypeError, ValueError) as error:
        return fail(ExitCode.POLICY_MISMATCH, "policy refused",
                    f"the policy's task '{metadata.task}' with overrides {metadata.task_overrides} cannot be made "
                    f"here: {error}")
    if args.video is not None:
        problem = _video_problem(args, task)
        if problem:
            return fail(ExitCode.USAGE, "usage", problem)
    calibration = None
    if args.calibration is not None:
        try:
            calibration = load_calibration(args.calibration)
            calibration.check_for(task.robot.name, task.name, task.robot.joint_names)
        except CalibrationError as error:
            return fail(ExitCode.USAGE, "calibration refused", error)
        print(f"deploy: {calibration.summary()}")
    control_dt = args.control_dt or metadata.robot.control_dt
    goal = {} if args.goal is None else {"goal_angle": args.goal}
    cfg = RunnerConfig(episodes=args.episodes, episode_steps=args.episode_steps, control_dt=args.control_dt,
                       max_overruns=args.max_overruns, max_stale_reads=args.max_stale_reads,
                       spin_s=args.spin_ms * 1e-3, seed=args.seed, task_state=goal, realtime=args.realtime,
                       rt_priority=args.rt_priority if args.realtime else 0)
    try:
        backend = make_backend(args, task, control_dt, calibration)
        check_policy(metadata, task, backend.robot)  # before the backend opens: nothing moves
    except PolicyMismatchError as error:
        return fail(error.exit_code, "policy refused", error)
    except ValueError as error:
        return fail(ExitCode.USAGE, "usage", error)

    print(f"deploy: policy {args.policy}: {metadata.summary()}")
    print(f"deploy: backend {args.backend}, {1 / control_dt:g} Hz, {args.episodes} episode(s)"
          + (f", log {args.log}" if args.log else ", no log"))
    runner: Runner | None = None
    log: LogWriter | None = None
    code = ExitCode.OK
    scratch = None
    if args.video is not None and args.log is None:  # the video is drawn from a log: keep a temporary one
        scratch = tempfile.TemporaryDirectory(prefix="deploy-video-")
        args = dataclasses.replace(args, log=Path(scratch.name) / "session.h5")
    started = time.monotonic()

    def progress_line(result: EpisodeResult) -> None:
        left = eta_s(result.index + 1, args.episodes, time.monotonic() - started)
        print(f"{format_episode(result, control_dt)} | {result.index + 1}/{args.episodes}, left "
              f"{format_duration(left)}", flush=True)

    with signals_as_exceptions():
        try:
            backend.open()

            def make_log(step_fields, episode_fields):
                nonlocal log
                log = LogWriter(args.log, args.episodes, step_fields, episode_fields,
                                session_attrs(args, metadata, backend, runner), overwrite=args.overwrite,
                                rt_priority=max(0, cfg.rt_priority - 1))
                return log

            runner = Runner(policy, backend, cfg, log_factory=make_log if args.log else None,
                            on_episode=progress_line)
            runner.run()
        except DeployError as error:
            code = error.exit_code
            kind = {ExitCode.POLICY_MISMATCH: "policy refused", ExitCode.HARDWARE_FAULT: "hardware fault",
                    ExitCode.NON_FINITE: "non-finite value", ExitCode.WATCHDOG_OVERRUN: "watchdog",
                    ExitCode.LOG_FAILED: "log failed"}.get(code, "interrupted")
            print(f"deploy.run: {kind}: {error}", file=sys.stderr)
        except ValueError as error:  # bad option values discovered while running (e.g. unknown task state)
            code = ExitCode.USAGE
            print(f"deploy.run: usage: {error}", file=sys.stderr)
        finally:
            with signals_ignored():
                backend.close()
                if log is not None:
                    try:
                        log.close()
                    except LogError as error:
                        print(f"deploy.run: log failed: {error}", file=sys.stderr)
                        code = code or ExitCode.LOG_FAILED
    results = runner.results if runner is not None else []
    if results:
        successes = [r.success for r in results if r.success is not None]
        rate = f"{sum(successes)}/{len(successes)} successful ({100 * np.mean(successes):.0f}%)" if successes else "-"
        misses = sum(r.overruns for r in results)
        print(f"deploy: {len(results)} episode(s): {rate}, mean return "
              f"{np.mean([r.episode_return for r in results]):.2f}, deadline misses {misses}"
              + (f"; log {args.log}" if args.log and scratch is None else ""))
    if args.video is not None and results:
        code = _write_video(args, code)
    if scratch is not None:
        scratch.cleanup()
    return int(code)


def _video_problem(args: Args, task) -> str | None:
    """Why --video cannot be written (a bad path or camera), found before anything runs."""
    from toolkit.video import camera_id, check_video_path

    try:
        check_video_path(args.video)
        camera_id(task.build_model(), args.camera or task.camera)
    except ValueError as error:
        return str(error)
    return None


def _write_video(args: Args, code: int) -> int:
    """Render the session's video from its log; a failure here never changes what was logged."""
    from deploy.video import LogVideoError, write_log_video
    from toolkit.video import GLUnavailableError

    try:
        path, frames = write_log_video(args.log, args.video, camera=args.camera)
    except (GLUnavailableError, LogVideoError, ValueError, OSError) as error:
        print(f"deploy.run: video not written: {error}", file=sys.stderr)
        return code or ExitCode.USAGE
    print(f"deploy: video {path} ({frames} frames)")
    return code


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(Args, args=argv, prog="python -m deploy.run")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
