"""The deployment control loop: policy in, clamped joint commands out, at the policy's rate.

One step at deadline ``t_k = t_0 + k * control_dt`` (absolute deadlines from
``time.perf_counter_ns``, so errors never accumulate):

1. read the sensors (``backend.read``) and check they are fresh (watchdog);
2. from step 1 on, the outcome of the previous action - :func:`toolkit.contract.step.task_step`,
   the training env's own step function called with numpy arrays: reward terms x scales, success,
   failure termination (an episode ends when the task says so, as in training), goal updates;
3. ``obs = observe(...)`` - the training observation (with the sim's observation noise when
   randomized);
4. ``action = policy(obs)``; ``target = next_joint_targets(...)`` - the training action mapping
   (with the sim's action noise and latency when randomized);
   ``command = clamp_joint_command(target, previous, limits, max_joint_speed * dt)`` - the
   safety clamp, applied to every command, always;
5. ``backend.write(command)``; hand the step's record to the log writer;
6. sleep until ~``spin_s`` before ``t_{k+1}``, then spin to the deadline.

Random numbers (episode draws, DR) come from one per-env stream (:mod:`toolkit.contract.rng`)
seeded with ``RunnerConfig.seed``, drawn in the training env's order: with the same seed and
policy, the deployment sim replays the episodes of a one-env training VecEnv seeded alike.

A step whose work ends after the next deadline is an overrun; ``max_overruns`` overruns in a
row stop the run (:class:`~deploy.errors.WatchdogOverrun`), as do ``max_stale_reads`` reads in a
row without new device data (:class:`~deploy.errors.StaleSensorData`). A NaN/inf observation or
action stops the robot before the value is used (:class:`~deploy.errors.NonFiniteError`).
Every stop holds the robot and records the episode's outcome in the log before re-raising;
the caller (:mod:`deploy.run`) then closes the backend, which turns the torque off.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from deploy.backends.base import Backend, Field
from deploy.errors import (
    STOP_SIGNAL_GATE,
    DeployError,
    ExitCode,
    NonFiniteError,
    PolicyMismatchError,
    StaleSensorData,
    WatchdogOverrun,
)
from deploy.log import LogWriter
from toolkit.contract.policy import PolicyError, mismatches
from toolkit.contract.rng import EnvStreams, env_seeds
from toolkit.contract.robot import RobotSpec, clamp_joint_command
from toolkit.contract.step import next_joint_targets, observed_readings, task_step
from toolkit.contract.task import Task

TIMING_FIELDS = ("period", "lateness", "read_latency", "policy_latency", "write_latency", "compute")


@dataclass
class RunnerConfig:
    """Loop and safety settings.

    Attributes:
        episodes: episodes to run.
        episode_steps: control steps per episode (None: the task's ``episode_steps``).
        control_dt: seconds per control step (None: the policy's metadata ``control_dt``).
        max_overruns: consecutive deadline overruns that stop the run.
        max_stale_reads: consecutive reads without new device data that stop the run.
        spin_s: how long before a deadline the loop stops sleeping and busy-waits.
        seed: seed of the episode draws (goals, initial states, DR): the per-env stream of a
            training env seeded alike.
        task_state: fixed task-state values (e.g. ``{"goal_angle": 1.0}``) overriding the draws.
        switch_interval_s: Python's GIL switch interval during the run (short, so that the log
            writer thread cannot hold the control loop off its deadline for the default 5 ms).
        realtime: pace steps at ``control_dt`` of wall-clock time. False (sim only) runs as fast as
            possible for evaluation; the physics still advances ``control_dt`` per step.
        rt_priority: run the control thread under SCHED_FIFO at this priority (1-99; 0: no).
            Cuts the wake-up latency of a loaded machine from milliseconds to ~0.1 ms; needs root,
            CAP_SYS_NICE or an rtprio limit, and falls back to normal scheduling with a warning.
    """

    episodes: int = 1
    episode_steps: int | None = None
    control_dt: float | None = None
    max_overruns: int = 5
    max_stale_reads: int = 3
    spin_s: float = 0.001
    seed: int = 0
    task_state: dict[str, float] = field(default_factory=dict)
    switch_interval_s: float = 0.0005
    realtime: bool = True
    rt_priority: int = 0


@dataclass
class EpisodeResult:
    """How one episode went; ``timing`` holds the per-step arrays (seconds)."""

    index: int
    steps: int
    success: bool | None
    episode_return: float
    status: int
    message: str
    overruns: int
    timing: dict[str, np.ndarray]
    terminated: bool = False
    metrics: dict[str, float] = field(default_factory=dict)

    def summary(self, control_dt: float) -> dict[str, float]:
        """Timing statistics in milliseconds (periods exclude the first step)."""
        t = self.timing
        period = t["period"][1:] * 1e3 if self.steps > 1 else np.full(1, np.nan)
        jitter = np.abs(period - control_dt * 1e3)

        def pct(values, q):
            return float(np.percentile(values, q)) if len(values) and np.isfinite(values).any() else float("nan")

        return {
            "period_mean_ms": float(np.mean(period)), "period_p99_ms": pct(period, 99),
            "jitter_p50_ms": pct(jitter, 50), "jitter_p99_ms": pct(jitter, 99),
            "lateness_max_ms": float(np.max(t["lateness"] * 1e3)) if self.steps else float("nan"),
            "policy_mean_ms": float(np.mean(t["policy_latency"] * 1e3)) if self.steps else float("nan"),
            "policy_p99_ms": pct(t["policy_latency"] * 1e3, 99),
            "read_mean_ms": float(np.mean(t["read_latency"] * 1e3)) if self.steps else float("nan"),
            "read_p99_ms": pct(t["read_latency"] * 1e3, 99),
            "overruns": self.overruns,
        }


def check_policy(metadata, task: Task, robot: RobotSpec) -> None:
    """Refuse a policy that cannot drive ``robot`` on ``task``: every mismatch
    (:func:`toolkit.contract.policy.mismatches`) in one :class:`PolicyMismatchError`, raised
    before anything moves."""
    problems = mismatches(metadata, robot, task)
    if problems:
        raise PolicyMismatchError(
            f"refusing policy (run '{metadata.run_name}', step {metadata.training_step}): it does not match this "
            f"backend:\n  - " + "\n  - ".join(problems)
            + "\nExport the policy again from a run of the current toolkit/robot definition, or use the robot it "
              "was trained for.")


def realtime_scheduling(priority: int) -> Callable[[], None]:
    """Switch the calling thread to SCHED_FIFO ``priority``; returns the function that undoes it.

    Without permission (no root/CAP_SYS_NICE) it warns and leaves the scheduling alone.
    """
    if priority <= 0 or not hasattr(os, "sched_setscheduler"):
        return lambda: None
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, ValueError) as error:
        print(f"deploy: warning: cannot use real-time scheduling (SCHED_FIFO {priority}: {error}); wake-ups will be "
              "less punctual. Grant CAP_SYS_NICE or an rtprio limit, or pass --rt-priority 0", file=sys.stderr)
        return lambda: None

    def restore() -> None:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, policy, param)

    return restore


class Pacer:
    """Absolute-deadline pacing: sleep to ``spin_ns`` before the deadline, then busy-wait."""

    def __init__(self, period_ns: int, spin_ns: int, realtime: bool = True) -> None:
        self.period_ns, self.spin_ns, self.realtime = period_ns, spin_ns, realtime
        self.deadline = time.perf_counter_ns()

    def start(self) -> None:
        self.deadline = time.perf_counter_ns()

    def wait(self) -> int:
        """Block until the current deadline; returns the wake-up time (ns)."""
        if not self.realtime:
            return time.perf_counter_ns()
        deadline = self.deadline
        remaining = deadline - time.perf_counter_ns()
        if remaining > self.spin_ns:
            time.sleep((remaining - self.spin_ns) * 1e-9)
        now = time.perf_counter_ns()
        while now < deadline:  # sleep() overshoots by up to ~0.1 ms (more when loaded): spin the rest
            now = time.perf_counter_ns()
        return now

    def advance(self, work_end_ns: int) -> bool:
        """Move to the next deadline; True if the work already ran past it (an overrun).

        More than a whole period late, the grid restarts at ``work_end_ns`` instead of firing a
        burst of catch-up steps.
        """
        if not self.realtime:
            self.deadline = work_end_ns
            return False
        nxt = self.deadline + self.period_ns
        overrun = work_end_ns > nxt
        if work_end_ns > nxt + self.period_ns:
            nxt = work_end_ns
        self.deadline = nxt
        return overrun


class Runner:
    """Runs a policy on a backend for ``cfg.episodes`` episodes, logging every step.

    Args:
        policy: an object with ``metadata`` (:class:`deploy.policy.PolicyMetadata`) and
            ``__call__(obs (B, O) float32) -> (B, A) float32`` (:class:`deploy.policy.OnnxPolicy`).
        backend: an opened :class:`Backend` (``sim`` or ``dclaw``).
        cfg: loop settings.
        log: the session's :class:`LogWriter`, or None for no log.
        log_factory: alternatively, ``log_factory(step_fields, episode_fields) -> LogWriter``,
            called once after the first reset (when the readings' shapes are known).
        on_episode: called with each finished :class:`EpisodeResult` (progress printing).
    """

    def __init__(self, policy, backend: Backend, cfg: RunnerConfig, log: LogWriter | None = None,
                 log_factory: Callable[[dict, dict], LogWriter] | None = None,
                 on_episode: Callable[[EpisodeResult], None] | None = None) -> None:
        self.policy, self.backend, self.cfg, self.log = policy, backend, cfg, log
        self.log_factory, self.on_episode = log_factory, on_episode
        self.task = backend.task
        self.robot = backend.robot
        check_policy(policy.metadata, self.task, self.robot)
        self.control_dt = float(cfg.control_dt or policy.metadata.robot.control_dt)
        if self.control_dt <= 0:
            raise ValueError(f"control_dt must be positive, got {self.control_dt}")
        self.episode_steps = cfg.episode_steps or self.task.episode_steps
        if cfg.max_overruns < 1 or cfg.max_stale_reads < 1:
            raise ValueError("max_overruns and max_stale_reads must be >= 1")
        robot = self.robot
        self.low, self.high = robot.joint_low, robot.joint_high
        self.action_scale = robot.action_scale
        self.max_step = robot.max_joint_speed * self.control_dt
        self.streams = EnvStreams(1)
        self.streams.seed(env_seeds(cfg.seed, 1))
        self.rand = self.streams.rand_for(None)
        self.results: list[EpisodeResult] = []

    # --- log schema -------------------------------------------------------------------
    def step_fields(self, readings: dict[str, np.ndarray], task_state: dict[str, np.ndarray]) -> dict[str, Field]:
        """Per-step datasets for the log, given example readings and task state."""
        j = self.robot.num_joints
        fields = {
            "obs": Field((self.task.obs_layout.size,), "float32"),
            "actions": Field((j,), "float32"),
            "joint_targets": Field((j,)),
            "time": Field(()),
            "timing/overrun": Field((), "int8"),
            **{f"timing/{name}": Field(()) for name in TIMING_FIELDS},
            **{f"readings/{k}": Field(v.shape[1:]) for k, v in readings.items()},
            **{f"task_state/{k}": Field(v.shape[1:]) for k, v in task_state.items()},
            # A randomized sim's noisy readings, which the observation was computed from.
            **({f"observed_readings/{k}": Field(readings[k].shape[1:]) for k in self.task.noisy_readings}
               if self.backend.randomizer is not None else {}),
            **self.backend.step_fields(),
        }
        return fields

    def episode_fields(self) -> dict[str, Field]:
        """Fixed per-episode datasets (``reset/...``)."""
        return {"joint_targets": Field((self.robot.num_joints,)), **self.backend.episode_fields()}

    # --- running ----------------------------------------------------------------------
    def run(self) -> list[EpisodeResult]:
        """Run every episode; raises a :class:`DeployError` on a deliberate stop (after
        holding the robot and logging the episode's outcome)."""
        previous_interval = sys.getswitchinterval()
        sys.setswitchinterval(self.cfg.switch_interval_s)
        restore_scheduler = realtime_scheduling(self.cfg.rt_priority)
        try:
            for index in range(self.cfg.episodes):
                result = self.run_episode(index)
                self.results.append(result)
                if self.on_episode is not None:
                    self.on_episode(result)
        finally:
            sys.setswitchinterval(previous_interval)
            restore_scheduler()
            gc.enable()
        return self.results

    def run_episode(self, index: int) -> EpisodeResult:
        """Reset, then run one episode at control rate (until its last step, or the task's
        failure termination)."""
        backend, task, rand = self.backend, self.task, self.rand
        steps, total, success, overruns, consecutive, stale = 0, 0.0, None, 0, 0, 0
        terminated, metrics = False, {}
        timing = {name: np.full(self.episode_steps, np.nan) for name in TIMING_FIELDS}
        pacer = Pacer(round(self.control_dt * 1e9), round(self.cfg.spin_s * 1e9), self.cfg.realtime)
        status, message = ExitCode.OK, "completed"
        try:
            reset = backend.reset(rand)  # a fault here is recorded as this episode's outcome too
            perturbation = backend.randomizer
            noisy = perturbation is not None and bool(task.noisy_readings)
            task_state = self._apply_overrides(reset.task_state)
            targets = np.asarray(reset.joint_targets, dtype=np.float64).reshape(1, -1)
            last_action = np.zeros_like(targets)
            log = self.log
            if log is None and self.log_factory is not None:
                readings, _ = backend.read()
                log = self.log = self.log_factory(self.step_fields(readings, task_state), self.episode_fields())
            if log is not None:
                log.set(index, {"reset/joint_targets": targets[0],
                                **{f"reset/{k}": v for k, v in reset.episode_values.items()}})
            gc.disable()  # a collection pause mid-episode would be a deadline miss; it runs after the episode
            pacer.start()
            t0 = pacer.deadline
            previous_start = None
            for k in range(self.episode_steps + 1):
                deadline = pacer.deadline
                start = pacer.wait()
                readings, fresh = backend.read()
                read_done = time.perf_counter_ns()
                stale = 0 if fresh else stale + 1
                if stale >= self.cfg.max_stale_reads:
                    detail = backend.describe_stale()
                    raise StaleSensorData(f"sensor data did not update for {stale} consecutive reads (episode "
                                          f"{index}, step {k}){': ' + detail if detail else ''}: a servo or the bus "
                                          "stopped delivering new values")
                if k > 0:  # the outcome of the previous action, computed by the training env's step function
                    outcome = task_step(task, readings, task_state, last_action, targets, rand)
                    total += float(outcome.reward[0])
                    success = bool(outcome.success[0])
                    terminated = bool(outcome.terminated[0])
                    metrics = {name: float(value[0]) for name, value in outcome.metrics.items()}
                    if log is not None:
                        log.append(index, {"reward": np.float64(outcome.reward[0]), "success": np.int8(success)})
                # Observed also after the last step: the training env does (its final observation),
                # which keeps the random streams of both in step.
                seen = observed_readings(task, readings, perturbation, rand)
                obs = task.observe(seen, task_state, targets, last_action).astype(np.float32)
                if k == self.episode_steps or terminated:
                    break
                state = backend.state()
                self._check_finite("observation", obs[0], index, k, task.obs_layout.slices())
                policy_start = time.perf_counter_ns()
                try:
                    action = np.asarray(self.policy(obs), dtype=np.float32)
                except PolicyError as error:  # the observation is finite here: the policy itself failed
                    backend.hold()
                    raise NonFiniteError(f"the policy produced no usable action at episode {index}, step {k}: "
                                         f"{error}") from None
                policy_done = time.perf_counter_ns()
                self._check_finite("action", action[0], index, k, None)
                action64 = action.astype(np.float64)
                target = next_joint_targets(targets, action64, self.action_scale, self.low, self.high, perturbation,
                                            rand)
                command = clamp_joint_command(target, targets, self.low, self.high, self.max_step)
                backend.write(command[0])
                end = time.perf_counter_ns()
                overrun = pacer.advance(end)
                overruns += overrun
                consecutive = consecutive + 1 if overrun else 0
                step_timing = {
                    "period": np.nan if previous_start is None else (start - previous_start) * 1e-9,
                    "lateness": (start - deadline) * 1e-9,
                    "read_latency": (read_done - start) * 1e-9,
                    "policy_latency": (policy_done - policy_start) * 1e-9,
                    "write_latency": (end - policy_done) * 1e-9,
                    "compute": (end - start) * 1e-9,
                }
                previous_start = start
                for name, value in step_timing.items():
                    timing[name][k] = value
                if log is not None:
                    log.check()
                with STOP_SIGNAL_GATE:  # a stop signal waits until the row is logged and counted
                    if log is not None:
                        log.append(index, {
                            "obs": obs[0], "actions": action[0], "joint_targets": command[0],
                            "time": np.float64((start - t0) * 1e-9), "timing/overrun": np.int8(overrun),
                            **{f"timing/{n}": np.float64(v) for n, v in step_timing.items()},
                            **{f"readings/{n}": v[0] for n, v in readings.items()},
                            **({f"observed_readings/{n}": seen[n][0] for n in task.noisy_readings} if noisy else {}),
                            **{f"task_state/{n}": v[0].copy() for n, v in task_state.items()},
                            **state,
                        })
                    targets, last_action = command, action64
                    steps = k + 1
                if consecutive >= self.cfg.max_overruns:
                    raise WatchdogOverrun(
                        f"{consecutive} consecutive control steps overran their {self.control_dt * 1e3:.1f} ms period "
                        f"(episode {index}, step {k}; last step took {(end - start) * 1e-6:.1f} ms): the machine is "
                        "too loaded or the bus too slow for this rate")
        except DeployError as error:
            status, message = error.exit_code, str(error)
            self._stop(index, steps, status, message, None, total)
            raise
        except BaseException as error:
            status, message = ExitCode.INTERRUPTED if isinstance(error, KeyboardInterrupt) else 1, repr(error)
            self._stop(index, steps, status, message, None, total)
            raise
        finally:
            gc.enable()
        if terminated:
            message = f"terminated by the task after {steps} steps (failure, e.g. the object dropped)"
        if log is not None:
            log.end_episode(index, status, message, steps, success, total)
            log.check()
        return EpisodeResult(index, steps, success, total, int(status), message, overruns,
                             {n: v[:steps] for n, v in timing.items()}, terminated, metrics)

    # --- helpers ----------------------------------------------------------------------
    def _apply_overrides(self, task_state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, value in self.cfg.task_state.items():
            if name not in task_state:
                raise ValueError(f"task '{self.task.name}' has no task state '{name}' to override; it has "
                                 f"{sorted(task_state)}")
            task_state[name] = np.full_like(task_state[name], value)
        return task_state

    def _check_finite(self, what: str, values: np.ndarray, episode: int, step: int, slices) -> None:
        if np.isfinite(values).all():
            return
        self.backend.hold()  # before anything else: nothing derived from this value may move the robot
        if slices:
            bad = [name for name, s in slices.items() if not np.isfinite(values[s]).all()]
        else:
            bad = [self.robot.joint_names[i] for i in np.flatnonzero(~np.isfinite(values))]
        raise NonFiniteError(f"non-finite {what} at episode {episode}, step {step} (in {', '.join(bad)}); the robot "
                             "was stopped before using it. A sensor returned garbage or the policy diverged: "
                             "inspect the log's last steps")

    def _stop(self, index: int, steps: int, status: int, message: str, success, total: float) -> None:
        try:
            self.backend.hold()
        finally:
            if self.log is not None:
                self.log.end_episode(index, status, message, steps, success, total)
