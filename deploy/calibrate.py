"""Fit the simulator to logged episodes: ``python -m deploy.calibrate real.h5 --out calib.yaml``.

    python -m deploy.calibrate real.h5 --out calib.yaml --plot calib.png
    python -m deploy.calibrate a.h5 b.h5 --episodes 0 1 --no-fit-offsets --generations 60

Each logged episode (a hardware log, or a sim log) is re-executed open loop: from its first
logged readings (the joint angles less the candidate's zero offsets, the valve angle; all else
at the model's defaults, velocities zero) the logged joint targets drive the simulated robot,
and the simulated readings are compared with the logged ones at every control step (joint
angles as an uncalibrated sensor reports them, and the object reading: the valve angle, as a
wrapped difference). The divergence is the RMS of those differences (rad) over every step,
reading and episode.

CMA-ES (the ``cmaes`` library) minimises the divergence over the parameters of
:class:`toolkit.contract.calibration.Calibration`: per-joint zero offsets, damping and actuator
gain scales, the joints' friction-loss scale, the object's friction scale, and the action
latency in control steps. Each generation's whole population, every candidate on every episode
and at every latency still in the race, runs in one ``mujoco.batch.Batch`` (per-sim model
fields, :class:`~toolkit.contract.model_fields.BatchFields`), stepped together. The latency is
an integer and is raced exactly: a candidate's fitness is its best divergence over the latency
values, which all run in the same batch; after ``--latency-race`` generations only the latency
with the best divergence so far stays (the final values are re-checked at every latency).

CMA-ES searches with one damping and one gain scale for all joints; a least-squares polish
(``scipy.optimize.least_squares``, ``--polish-iterations``) then refines every parameter, the
per-joint scales included, from CMA-ES's best. Its Jacobian is finite differences, every
perturbed candidate in one batched simulation. CMA-ES finds the basin from a nominal start;
the polish converges inside it in a few iterations, where CMA-ES would need hundreds of
generations for the ill-conditioned part: the friction loss trades off against the damping
and gain scales (its dead band is friction loss / kp).

Search bounds: the robot's DR table ranges (``toolkit.contract.dr.DRTable``; the D'Claw's is
``robots.dclaw.turn.DR``), widened by ``--bound-widening`` on each side, since a real robot may lie
outside what training randomized (the D'Claw's gain range 0.75-1.5 widened by 1.5 is 0.5-2.25):
damping and friction-loss scales from ``joint_damping``, gains from ``actuator_gain``, the object's
friction from ``friction``; offsets within +-``--offset-bound`` rad (0.15 rad, 8.6 degrees: more
than a servo horn mounted one spline tooth off, which is found by eye and fixed by hand);
latency 0 to the table's ``max_action_latency`` + 1. Values that end within 0.5 % of a bound are
flagged: the bound, not the data, decided them.

Exit status: 0 written; 1 the fit did not improve the divergence (nothing written, unless
``--force``); 2 unusable input (the message names the file and episode: another robot or task than
asked, fewer than 10 steps, no joint targets, NaN/inf rows, not a deployment log).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import tyro

import toolkit
from deploy.backends.base import Field
from deploy.log import LogFormatError, LogReader, LogWriter
from toolkit.contract.calibration import (
    Calibration,
    CalibrationError,
    apply_scales,
    calibration_targets,
    delayed_commands,
    nominal_values,
    physical_angle,
    physical_target,
    reported_angle,
)
from toolkit.contract.step import substeps as substeps_rule
from toolkit.contract.task import Task

#: Fewest control steps an episode must have to be used.
MIN_STEPS = 10
#: A fit must lower the divergence by at least this fraction to count as an improvement.
MIN_IMPROVEMENT = 0.01
#: A normalised parameter within this distance of 0 or 1 is reported as at its bound.
AT_BOUND = 0.005
#: Forward-difference step of the polish's Jacobian in the unit search box (1 % of each range): a secant wide
#: enough to step over the small-scale roughness contacts give the residuals (a finger on the valve).
FD_STEP = 1e-2
#: Share of ``max_time_s`` kept for the polish: CMA-ES stops at the rest.
POLISH_TIME_SHARE = 0.25
#: Parameter groups, in the order of the search vector.
GROUPS = ("offsets", "damping", "gain", "friction_loss", "object_friction")


class CalibrationInputError(ValueError):
    """A log or episode that cannot be calibrated from (exit status 2); the message names it."""


@dataclass
class Args:
    """Fit the simulator's parameters (joint zero offsets, damping and actuator gain scales, friction-loss and object
    friction scales, action latency) to logged episodes by re-executing their joint targets open loop, with CMA-ES
    over a batched MuJoCo population. Writes a self-describing calibration YAML. Exit status: 0 written, 1 the fit did
    not improve the divergence (nothing written unless --force), 2 unusable input."""

    logs: tyro.conf.Positional[tuple[Path, ...]]
    """HDF5 logs written by `python -m deploy.run` (hardware or sim), one or more."""
    out: Path = Path("calib.yaml")
    """Calibration file to write (YAML; replaced if it exists)."""
    plot: Path | None = None
    """Write a figure (PNG/PDF/SVG): logged, nominal-sim and fitted-sim trajectories of one episode, and the
    optimiser's progress."""
    plot_episode: int = 0
    """Which of the episodes used (in order) --plot draws."""
    task: str | None = None
    """Task the logs must be of (default: the first log's); a log of another robot or task is refused."""
    episodes: tuple[int, ...] | None = None
    """Episode indices to use from every log (default: every episode that has steps)."""
    generations: int = 150
    """CMA-ES generations."""
    population: int | None = None
    """Candidates per generation (default: CMA-ES's 4 + 3 ln(parameters))."""
    sigma: float = 0.2
    """Initial CMA-ES step size, as a fraction of each parameter's search range."""
    seed: int = 0
    """Seed of the optimiser."""
    max_time_s: float | None = None
    """Stop the fit after this many seconds (at the end of a generation)."""
    fit_offsets: bool = True
    """Fit per-joint zero offsets (rad)."""
    fit_damping: bool = True
    """Fit per-joint damping scales."""
    fit_gain: bool = True
    """Fit per-joint actuator gain (kp) scales."""
    fit_friction_loss: bool = True
    """Fit the friction-loss scale of the robot's joints."""
    fit_object_friction: bool = True
    """Fit the object's friction scale (the valve hinge's damping and friction loss)."""
    fit_latency: bool = True
    """Fit the action latency (whole control steps); off: latency 0."""
    shared_scales: bool = False
    """One damping and one gain scale for all joints instead of one per joint (fewer parameters, for short logs)."""
    offset_bound: float = 0.15
    """Offsets are searched within +-this many rad."""
    bound_widening: float = 1.5
    """Scale bounds are the DR table's ranges divided / multiplied by this factor."""
    max_latency: int | None = None
    """Largest latency candidate in control steps (default: the DR table's max_action_latency + 1)."""
    latency_race: int = 8
    """Generations during which every latency candidate runs; then only the best so far continues."""
    polish_iterations: int = 20
    """Least-squares iterations after CMA-ES, over every parameter at CMA-ES's latency (scipy's least_squares; a
    Jacobian by finite differences is one batched simulation); 0: none."""
    threads: int = 0
    """Physics threads of the batched simulator (0: all CPUs)."""
    force: bool = False
    """Write the calibration even when it does not improve the divergence."""


# --- logged episodes -----------------------------------------------------------------------------
@dataclass
class EpisodeData:
    """One logged episode, as the fit uses it.

    Attributes:
        source: "<file> episode <n>" (error messages, the calibration's record).
        file, index: where it came from.
        readings: the compared readings, each (T, k): ``joint_pos`` and the task's object readings.
        joint_targets: commands sent at each step, (T, J).
        reset_targets: joint targets in force at the reset, (J,).
        task_state: the task state of the first step, each (k,) (poses the goal marker).
        applied_offsets: zero offsets the logging backend already took off the joint readings
            (a D'Claw run with ``--calibration``), (J,): the fit finds what remains, the file
            holds the sum.
    """

    source: str
    file: str
    index: int
    readings: dict[str, np.ndarray]
    joint_targets: np.ndarray
    reset_targets: np.ndarray
    task_state: dict[str, np.ndarray] = field(default_factory=dict)
    applied_offsets: np.ndarray | None = None

    @property
    def steps(self) -> int:
        return int(self.joint_targets.shape[0])


def compared_readings(task: Task) -> tuple[str, ...]:
    """The readings the divergence compares: those that pose the task's model (joint angles and the
    object's readings, ``task.pose_readings``); names ending in ``_angle`` are angles (wrapped)."""
    return tuple(task.pose_readings)


def is_angle(reading: str) -> bool:
    """Whether a compared reading is an angle of a revolving object (compared as a wrapped difference)."""
    return reading.endswith("_angle")


def wrap(angle):
    """Wrapped to [-pi, pi)."""
    return (angle + math.pi) % (2 * math.pi) - math.pi


def log_task(reader: LogReader, path: Path) -> tuple[str, str, dict]:
    """(robot, task, task overrides) named by a log's policy metadata."""
    raw = reader.attrs.get("policy_metadata")
    if raw is None:
        raise CalibrationInputError(f"{path}: the log has no 'policy_metadata' attribute: it does not say which robot "
                                    "and task it records")
    try:
        metadata = json.loads(raw) if isinstance(raw, str) else dict(raw)
        overrides = metadata.get("task_overrides", "{}")
        overrides = json.loads(overrides) if isinstance(overrides, str) else dict(overrides or {})
        return str(metadata["robot"]), str(metadata["task"]), overrides
    except (TypeError, ValueError, KeyError) as error:
        raise CalibrationInputError(f"{path}: the log's 'policy_metadata' cannot be read ({error!r}): it must be the "
                                    "JSON object deploy.run writes, with 'robot' and 'task'") from None


def load_episodes(paths: Sequence[Path], task_name: str | None = None, episodes: Sequence[int] | None = None
                  ) -> tuple[Task, float, list[EpisodeData]]:
    """The task, control period and episodes of ``paths``; raises :class:`CalibrationInputError`.

    Every log must be of one task (``task_name``, else the first log's) and control period;
    ``episodes`` selects indices in every log (default: every episode with steps; episodes that
    never started are skipped). Each episode used needs >= :data:`MIN_STEPS` steps, joint targets,
    the compared readings, and finite values in all of them.
    """
    from robots import make_task

    if not paths:
        raise CalibrationInputError("no log given: name one or more HDF5 logs written by python -m deploy.run")
    task: Task | None = None
    control_dt: float | None = None
    out: list[EpisodeData] = []
    for path in paths:
        try:
            reader = LogReader(path)
        except LogFormatError as error:
            raise CalibrationInputError(str(error)) from None
        with reader:
            robot, name, overrides = log_task(reader, path)
            if task is None:
                wanted = task_name or name
                try:
                    task = make_task(wanted, **(overrides if wanted == name else {}))
                except (TypeError, ValueError) as error:
                    raise CalibrationInputError(f"{path}: task '{wanted}' cannot be made: {error}") from None
            if name != task.name or robot != task.robot.name:
                raise CalibrationInputError(
                    f"{path} is a log of robot '{robot}', task '{name}', but the calibration is for robot "
                    f"'{task.robot.name}', task '{task.name}'" + ("" if task_name else " (the first log's)")
                    + ": calibrate each task from its own logs (--task names the one wanted)")
            dt = float(reader.attrs.get("control_dt", task.robot.control_dt))
            if control_dt is None:
                control_dt = dt
            elif not math.isclose(dt, control_dt, rel_tol=1e-9):
                raise CalibrationInputError(f"{path} was logged at a {dt:g} s control period, the first log at "
                                            f"{control_dt:g} s: calibrate logs of one control rate together")
            applied = _applied_offsets(reader, task.robot.num_joints)
            if out and not np.allclose(applied, out[0].applied_offsets, atol=1e-12):
                raise CalibrationInputError(f"{path} was logged with zero offsets {applied.tolist()} taken off, "
                                            f"{out[0].source} with {out[0].applied_offsets.tolist()}: calibrate "
                                            "logs recorded with one calibration together")
            count = reader.episode_count
            chosen = range(count) if episodes is None else episodes
            for index in chosen:
                if not 0 <= index < count:
                    raise CalibrationInputError(f"{path} has episodes 0..{count - 1}; episode {index} does not exist")
                if episodes is None and reader.steps(index) == 0:
                    continue  # pre-created group of an episode the session never reached
                try:
                    episode = reader.episode(index)
                except LogFormatError as error:
                    raise CalibrationInputError(str(error)) from None
                data = _episode_data(task, path, episode)
                data.applied_offsets = applied
                out.append(data)
    if not out:
        raise CalibrationInputError(f"no episode with steps in {', '.join(map(str, paths))}")
    return task, float(control_dt), out


def _applied_offsets(reader: LogReader, joints: int) -> np.ndarray:
    """The zero offsets a hardware log's backend subtracted from its readings (0 without)."""
    try:
        info = json.loads(reader.attrs.get("backend_info", "{}"))
    except (TypeError, ValueError):
        info = {}
    offsets = np.asarray(info.get("joint_offsets", np.zeros(joints)), dtype=np.float64)
    return offsets if offsets.shape == (joints,) else np.zeros(joints)


def _episode_data(task: Task, path: Path, episode) -> EpisodeData:
    source = f"{path} episode {episode.index}"
    j = task.robot.num_joints
    if episode.steps < MIN_STEPS:
        raise CalibrationInputError(f"{source} has {episode.steps} step(s); calibration needs at least {MIN_STEPS} "
                                    "(choose others with --episodes)")
    if "joint_targets" not in episode.data:
        raise CalibrationInputError(f"{source} has no joint_targets: the commands sent are needed to re-execute it "
                                    "(was it written by python -m deploy.run?)")
    readings = {}
    logged = episode.group("readings")
    for name in compared_readings(task):
        if name not in logged:
            raise CalibrationInputError(f"{source} has no readings/{name}, which task '{task.name}' compares "
                                        f"(it has {sorted(logged)})")
        readings[name] = np.asarray(logged[name], dtype=np.float64).reshape(episode.steps, -1)
    targets = np.asarray(episode["joint_targets"], dtype=np.float64)
    if targets.shape != (episode.steps, j) or readings["joint_pos"].shape[1] != j:
        raise CalibrationInputError(f"{source}: joint_targets {targets.shape} and readings/joint_pos "
                                    f"{readings['joint_pos'].shape} must have {j} columns, one per joint of "
                                    f"'{task.robot.name}'")
    for name, values in {"joint_targets": targets, **{f"readings/{k}": v for k, v in readings.items()}}.items():
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if len(bad):
            raise CalibrationInputError(f"{source}: {name} has NaN/inf at step(s) {bad[:10].tolist()}"
                                        + (" ..." if len(bad) > 10 else "") + "; such rows cannot be compared: "
                                        "leave the episode out with --episodes")
    reset = episode.reset.get("joint_targets")
    reset = targets[0] if reset is None or not np.isfinite(reset).all() else np.asarray(reset, dtype=np.float64)
    task_state = {k: np.asarray(v[0], dtype=np.float64) for k, v in episode.group("task_state").items()}
    return EpisodeData(source, str(path), episode.index, readings, targets, reset.reshape(j), task_state)


# --- parameters ---------------------------------------------------------------------------------
@dataclass
class CandidateParams:
    """Physical parameters of ``n`` candidates: offsets, damping and gain (n, J), friction loss and
    object friction (n, 1)."""

    offsets: np.ndarray
    damping: np.ndarray
    gain: np.ndarray
    friction_loss: np.ndarray
    object_friction: np.ndarray

    @classmethod
    def of(cls, calibrations: Sequence[Calibration]) -> CandidateParams:
        return cls(np.stack([c.joint_offsets for c in calibrations]),
                   np.stack([c.joint_damping_scale for c in calibrations]),
                   np.stack([c.actuator_gain_scale for c in calibrations]),
                   np.array([[c.friction_loss_scale] for c in calibrations]),
                   np.array([[c.object_friction_scale] for c in calibrations]))

    @property
    def count(self) -> int:
        return int(self.offsets.shape[0])

    def repeat(self, times: int) -> CandidateParams:
        """Each candidate's row ``times`` times in a row (one per sim of the candidate)."""
        return CandidateParams(*(np.repeat(a, times, axis=0) for a in
                                 (self.offsets, self.damping, self.gain, self.friction_loss, self.object_friction)))


@dataclass(frozen=True)
class ParameterSpace:
    """The search space: a vector ``u`` in [0, 1]^n per candidate, mapped to physical values.

    Offsets map linearly to +-``offset_bound``, scales log-linearly to their (low, high) bounds.
    ``groups`` are the parameter groups searched (see :data:`GROUPS`); the others stay nominal.
    ``shared`` searches one damping and one gain scale for all joints.
    """

    joint_names: tuple[str, ...]
    groups: tuple[str, ...]
    offset_bound: float
    damping_bounds: tuple[float, float]
    gain_bounds: tuple[float, float]
    friction_loss_bounds: tuple[float, float]
    object_friction_bounds: tuple[float, float]
    shared: bool = False

    @classmethod
    def for_task(cls, task: Task, groups: Sequence[str], offset_bound: float = 0.15, widening: float = 1.5,
                 shared: bool = False) -> ParameterSpace:
        """Bounds from the task's DR table (see the module docstring)."""
        table = task.dr_table()
        if table is None:
            raise CalibrationInputError(f"task '{task.name}' has no DR table, which the calibration's bounds come from")
        if not widening >= 1:
            raise CalibrationInputError(f"--bound-widening must be >= 1, got {widening}")
        if not offset_bound > 0:
            raise CalibrationInputError(f"--offset-bound must be > 0 rad, got {offset_bound}")

        def widen(low_high) -> tuple[float, float]:
            low, high = low_high
            return float(min(low, 1.0) / widening), float(max(high, 1.0) * widening)

        unknown = set(groups) - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown parameter groups {sorted(unknown)}; known: {GROUPS}")
        return cls(tuple(task.robot.joint_names), tuple(g for g in GROUPS if g in groups), float(offset_bound),
                   widen(table.joint_damping), widen(table.actuator_gain), widen(table.friction),
                   widen(table.friction), shared)

    def _blocks(self) -> list[tuple[str, int, tuple[float, float]]]:
        """(group, coordinates, bounds: linear for offsets, of the log for scales), in vector order."""
        j = len(self.joint_names)
        sizes = {"offsets": j, "damping": 1 if self.shared else j, "gain": 1 if self.shared else j,
                 "friction_loss": 1, "object_friction": 1}
        bounds = {"offsets": (-self.offset_bound, self.offset_bound), "damping": self.damping_bounds,
                  "gain": self.gain_bounds, "friction_loss": self.friction_loss_bounds,
                  "object_friction": self.object_friction_bounds}
        return [(g, sizes[g], bounds[g] if g == "offsets" else (math.log(bounds[g][0]), math.log(bounds[g][1])))
                for g in self.groups]

    @property
    def dim(self) -> int:
        return sum(size for _, size, _ in self._blocks())

    def names(self) -> list[str]:
        """A name per coordinate ("offset FFJ10", "damping FFJ10" or "damping (all joints)", ...)."""
        label = {"offsets": "offset", "damping": "damping", "gain": "gain", "friction_loss": "friction loss",
                 "object_friction": "object friction"}
        out = []
        for group, size, _ in self._blocks():
            if group in ("offsets", "damping", "gain"):
                out += [f"{label[group]} {name}" for name in self.joint_names] if size > 1 else \
                    [f"{label[group]} (all joints)"]
            else:
                out.append(label[group])
        return out

    def scale_mask(self) -> np.ndarray:
        """Which coordinates are scales (not offsets), (dim,) bool."""
        masks = [np.full(size, group != "offsets") for group, size, _ in self._blocks()]
        return np.concatenate(masks) if masks else np.zeros(0, dtype=bool)

    def nominal(self) -> np.ndarray:
        """``u`` of the nominal model (no offsets, every scale 1)."""
        out = [np.full(size, (0.0 - low) / (high - low)) for _, size, (low, high) in self._blocks()]
        return np.concatenate(out) if out else np.zeros(0)

    def decode(self, u: np.ndarray) -> CandidateParams:
        """Physical parameters of candidates ``u`` (n, dim)."""
        u = np.atleast_2d(np.asarray(u, dtype=np.float64))
        n, j = u.shape[0], len(self.joint_names)
        values = {"offsets": np.zeros((n, j)), "damping": np.ones((n, j)), "gain": np.ones((n, j)),
                  "friction_loss": np.ones((n, 1)), "object_friction": np.ones((n, 1))}
        start = 0
        for group, size, (low, high) in self._blocks():
            value = low + (high - low) * np.clip(u[:, start:start + size], 0.0, 1.0)
            start += size
            values[group] = np.broadcast_to(value if group == "offsets" else np.exp(value),
                                            values[group].shape).copy()
        return CandidateParams(**values)

    def encode(self, params: CandidateParams) -> np.ndarray:
        """``u`` (dim,) of the first candidate of ``params`` (shared scales: the joints' geometric mean)."""
        out = []
        for group, size, (low, high) in self._blocks():
            value = getattr(params, group)[0]
            value = value if group == "offsets" else np.log(value)
            if size == 1 and value.size > 1:
                value = np.array([value.mean()])
            out.append(np.clip((value - low) / (high - low), 0.0, 1.0))
        return np.concatenate(out) if out else np.zeros(0)

    def at_bounds(self, params: CandidateParams) -> list[str]:
        """The searched values of the first candidate of ``params`` within :data:`AT_BOUND` of their
        bounds (of the log range for scales): "offset FFJ10", "damping (all joints)", ..."""
        out = []
        names = iter(self.names())
        for group, size, (low, high) in self._blocks():
            values = getattr(params, group)[0]
            values = values if group == "offsets" else np.log(values)
            values = values[:1] if size == 1 else values
            margin = AT_BOUND * (high - low)
            out += [name for name, value in zip(names, values, strict=False)
                    if not low + margin <= value <= high - margin]
        return out

    def describe(self) -> dict:
        return {"groups": list(self.groups), "shared_scales": self.shared, "offset_bound_rad": self.offset_bound,
                "damping_bounds": list(self.damping_bounds), "gain_bounds": list(self.gain_bounds),
                "friction_loss_bounds": list(self.friction_loss_bounds),
                "object_friction_bounds": list(self.object_friction_bounds)}


# --- the batched open-loop simulator ------------------------------------------------------------------
class _BatchView:
    """A ``mujoco.batch.Batch``'s live state arrays under the names task code uses (``qpos``, ...)."""

    _FIELDS = ("qpos", "qvel", "ctrl", "act", "mocap_pos", "mocap_quat", "xfrc_applied", "qfrc_applied")

    def __init__(self, batch) -> None:
        self._batch = batch
        for name in self._FIELDS:
            setattr(self, name, batch.bind(name))

    def data_field(self, name: str) -> np.ndarray:
        return self._batch.bind(name)


class OpenLoopSimulator:
    """Candidates x latencies x episodes, re-executed open loop in one ``mujoco.batch.Batch``.

    Sim ``s`` runs candidate ``s // (L * E)`` at latency ``latencies[(s // E) % L]`` on episode
    ``s % E``. :meth:`run` writes each candidate's model fields (:func:`apply_scales` on
    :class:`~toolkit.contract.model_fields.BatchFields`), resets every sim to its episode's first
    readings, and steps all sims together, one ``Batch.step`` per control step.

    Args:
        task: the logs' task.
        episodes: the episodes to re-execute.
        num_candidates: candidates per :meth:`run`.
        latencies: latency values (control steps) each candidate runs at.
        control_dt: the logs' control period.
        nthread: physics threads (0: all CPUs).
    """

    def __init__(self, task: Task, episodes: Sequence[EpisodeData], num_candidates: int, latencies: Sequence[int],
                 control_dt: float, nthread: int = 0) -> None:
        import mujoco
        from mujoco.batch import Batch

        from toolkit.contract.model_fields import BatchFields

        self.task, self.episodes = task, list(episodes)
        self.latencies = tuple(int(v) for v in latencies)
        model = task.build_model()
        task.bind(model)
        self.substeps, model.opt.timestep = substeps_rule(control_dt, model.opt.timestep)
        self.model = model
        self.targets = calibration_targets(model, task)
        self.num_candidates = int(num_candidates)
        p, lat, e = self.num_candidates, len(self.latencies), len(self.episodes)
        self.nsim = p * lat * e
        self.batch = Batch(model, self.nsim, nthread=nthread or (os.cpu_count() or 1), persistent=True)
        self.fields = BatchFields(self.batch)
        self.nominal = nominal_values(self.fields)
        self.view = _BatchView(self.batch)
        self._stage_vel = int(mujoco.mjtStage.mjSTAGE_VEL)
        self._stage_none = int(mujoco.mjtStage.mjSTAGE_NONE)
        self.names = compared_readings(task)
        self.steps = np.array([ep.steps for ep in self.episodes])
        t_max = int(self.steps.max())
        j = task.robot.num_joints
        # Delayed, padded commands (L, E, T, J): what reaches the actuators at each step.
        commands = np.zeros((lat, e, t_max, j))
        for li, latency in enumerate(self.latencies):
            for ei, ep in enumerate(self.episodes):
                line = delayed_commands(ep.joint_targets, ep.reset_targets, latency)
                commands[li, ei, :ep.steps] = line
                commands[li, ei, ep.steps:] = line[-1]
        self._commands = commands
        sims = np.arange(self.nsim)
        self._episode_of, self._latency_of = sims % e, (sims // e) % lat
        self._candidate_of = sims // (lat * e)
        self._reset_targets = np.stack([ep.reset_targets for ep in self.episodes])
        self._first = {name: np.stack([ep.readings[name][0] for ep in self.episodes]) for name in self.names}
        state_names = sorted(set().union(*(ep.task_state for ep in self.episodes)))
        self._task_state = {name: np.stack([ep.task_state.get(name, np.zeros(1)) for ep in self.episodes])
                            .reshape(e, -1) for name in state_names}
        self._actuators = np.asarray(self.targets.actuators)
        # Logged readings padded to (E, T, k), and which rows are real steps.
        self._valid = np.arange(t_max)[None, :] < self.steps[:, None]
        self._logged = {}
        for name in self.names:
            padded = np.zeros((e, t_max, self.episodes[0].readings[name].shape[1]))
            for ei, ep in enumerate(self.episodes):
                padded[ei, :ep.steps] = ep.readings[name]
            self._logged[name] = padded

    def run(self, params: CandidateParams, record: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Re-execute every episode for each candidate at each latency.

        Returns the simulated readings ``record`` (default: the compared ones) as reported by the
        candidates' sensors, each (P, L, E, T, k), padded past an episode's end with its last row.
        """
        if params.count != self.num_candidates:
            raise ValueError(f"the simulator runs {self.num_candidates} candidates, got {params.count}")
        per_sim = params.repeat(len(self.latencies) * len(self.episodes))
        view, batch = self.view, self.batch
        apply_scales(self.fields, np.arange(self.nsim), self.nominal, self.targets, joint_damping=per_sim.damping,
                     actuator_gain=per_sim.gain, friction_loss=per_sim.friction_loss,
                     object_friction=per_sim.object_friction)
        e_of = self._episode_of
        offsets = per_sim.offsets
        batch.reset(stage=self._stage_none)
        first = {name: value[e_of] for name, value in self._first.items()}
        first["joint_pos"] = physical_angle(first["joint_pos"], offsets)
        self.task.show(view, first, {name: value[e_of] for name, value in self._task_state.items()})
        view.qvel[:] = 0.0
        view.ctrl[:, self._actuators] = physical_target(self._reset_targets[e_of], offsets)
        batch.forward(stage=self._stage_vel)
        record = tuple(record or self.names)
        t_max = int(self.steps.max())
        out: dict[str, np.ndarray] = {}
        stepping = None
        for k in range(t_max):
            readings = self.task.read(view)
            for name in record:
                value = np.asarray(readings[name], dtype=np.float64)
                if name == "joint_pos":
                    value = reported_angle(value, offsets)
                if name not in out:
                    out[name] = np.empty((self.nsim, t_max, value.shape[1]))
                out[name][:, k] = value
            if k + 1 == t_max:
                break
            view.ctrl[:, self._actuators] = physical_target(self._commands[self._latency_of, e_of, k], offsets)
            running = self.steps[e_of] > k + 1
            if stepping is None or running.sum() != len(stepping):
                stepping = None if running.all() else np.flatnonzero(running)
            batch.step(ids=stepping, nstep=self.substeps, stage=self._stage_vel)
        shape = (self.num_candidates, len(self.latencies), len(self.episodes), t_max)
        return {name: value.reshape(*shape, value.shape[-1]) for name, value in out.items()}

    def _differences(self, simulated: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Simulated less logged readings, each (P, L, E, T, k), angles wrapped, 0 past an episode's end."""
        out = []
        for name in self.names:
            diff = simulated[name] - self._logged[name]
            if is_angle(name):
                diff = wrap(diff)
            out.append(np.where(self._valid[None, None, :, :, None], diff, 0.0))
        return out

    def errors(self, simulated: dict[str, np.ndarray]) -> np.ndarray:
        """Squared differences summed over each episode's steps, (P, L, E, C) over the compared
        channels (joints, then each object reading's components); angles wrapped."""
        out = np.concatenate([np.sum(diff * diff, axis=3) for diff in self._differences(simulated)], axis=-1)
        return np.where(np.isfinite(out), out, np.inf)

    def residuals(self, simulated: dict[str, np.ndarray]) -> np.ndarray:
        """Every compared difference of every real step as one vector per candidate and latency,
        (P, L, R): the divergence is their RMS."""
        p, lat = self.num_candidates, len(self.latencies)
        return np.concatenate([diff[:, :, self._valid].reshape(p, lat, -1) for diff in self._differences(simulated)],
                              axis=-1)

    def channel_names(self) -> list[str]:
        names = []
        for name in self.names:
            width = self.episodes[0].readings[name].shape[1]
            if name == "joint_pos":
                names += list(self.task.robot.joint_names)
            else:
                names += [name] if width == 1 else [f"{name}[{i}]" for i in range(width)]
        return names

    def divergence(self, errors: np.ndarray) -> np.ndarray:
        """RMS divergence (rad) per candidate and latency, (P, L), over every step, episode and channel."""
        count = float(self.steps.sum()) * errors.shape[-1]
        return np.sqrt(errors.sum(axis=(2, 3)) / count)

    def channel_divergence(self, errors: np.ndarray) -> np.ndarray:
        """RMS divergence per channel (rad), (P, L, C)."""
        return np.sqrt(errors.sum(axis=2) / float(self.steps.sum()))


# --- the fit ---------------------------------------------------------------------------------------
@dataclass
class FitResult:
    """Outcome of :func:`fit`."""

    calibration: Calibration
    improved: bool
    divergence_before: dict[str, float]
    divergence_after: dict[str, float]
    latency_divergence: dict[int, float]
    at_bounds: list[str]
    history: list[dict]
    elapsed_s: float
    generations: int
    polish_iterations: int
    parameter_names: list[str]
    channel_names: list[str]


def latency_candidates(task: Task, fit_latency: bool, max_latency: int | None) -> tuple[int, ...]:
    if not fit_latency:
        return (0,)
    if max_latency is None:
        table = task.dr_table()
        max_latency = (table.max_action_latency if table is not None else 0) + 1
    if max_latency < 0:
        raise CalibrationInputError(f"--max-latency must be >= 0, got {max_latency}")
    return tuple(range(max_latency + 1))


def evaluate(task: Task, episodes: Sequence[EpisodeData], control_dt: float, calibrations: Sequence[Calibration],
             nthread: int = 0, record: Sequence[str] | None = None) -> tuple[np.ndarray, dict, OpenLoopSimulator]:
    """Per-channel divergence (C,) of each calibration (at its own latency) and its simulated readings."""
    rows, sims = [], {}
    for calibration in calibrations:
        sim = OpenLoopSimulator(task, episodes, 1, [calibration.action_latency], control_dt, nthread)
        simulated = sim.run(CandidateParams.of([calibration]), record)
        rows.append(sim.channel_divergence(sim.errors(simulated))[0, 0])
        sims[len(rows) - 1] = {k: v[0, 0] for k, v in simulated.items()}
    return np.stack(rows), sims, sim


@dataclass
class _StageResult:
    name: str
    u: np.ndarray
    latency: int
    divergence: float
    mean: np.ndarray | None
    generations: int
    population: int
    evaluations: int = 0


def _cma_stage(task: Task, episodes: Sequence[EpisodeData], control_dt: float, space: ParameterSpace,
               start_u: np.ndarray, sigma: float, generations: int, latencies: Sequence[int], *, population: int | None,
               seed: int, latency_race: int, deadline: float | None, nthread: int, progress, history: list[dict],
               stage: str, initial_design: int = 0, starts: int = 1) -> _StageResult:
    """CMA-ES over ``space`` from ``start_u``: each generation one batched simulation of every
    candidate x latency still racing x episode.

    With ``initial_design``, a space-filling look comes first, and ``starts`` CMA-ES runs begin at
    its best distinct points; they race for ``latency_race`` generations (the latencies race
    alongside), then only the run with the best divergence continues.
    """
    from cmaes import CMA

    # CMA-ES needs two coordinates at least: a lone parameter gets an inert companion.
    dim = max(space.dim, 2) if space.dim else 0
    pad = dim - space.dim
    start_u = np.concatenate([np.clip(start_u, 0.0, 1.0), np.full(pad, 0.5)])

    def make(mean: np.ndarray, run: int) -> CMA:
        return CMA(mean=mean, sigma=sigma, bounds=np.tile([0.0, 1.0], (dim, 1)), seed=seed + run,
                   population_size=population)

    racing = list(latencies)
    latency_best = {lat: math.inf for lat in racing}
    popsize = make(start_u, 0).population_size if dim else 1
    best = _StageResult(stage, start_u, racing[0], math.inf, None, 0, popsize)
    started = time.monotonic()
    means = [start_u]
    if initial_design and space.dim:
        # The start point and `initial_design` candidates whose scales are drawn uniformly over their
        # whole ranges (offsets stay at the start point), each at every latency, in one batched call.
        # A nominal start can sit on a plateau (a joint that settles within a control period looks
        # alike at every damping below the true one, at 10 Hz) or by a false minimum (an underdamped
        # joint aliased at 10 Hz): CMA-ES starts from the best distinct points instead.
        rng = np.random.default_rng(seed)
        design = np.repeat(start_u[None], initial_design + 1, axis=0)
        scales = np.flatnonzero(np.concatenate([space.scale_mask(), np.zeros(pad, dtype=bool)]))
        design[1:, scales] = rng.uniform(size=(initial_design, len(scales)))
        looked = OpenLoopSimulator(task, episodes, len(design), racing, control_dt, nthread)
        divergence = looked.divergence(looked.errors(looked.run(space.decode(design[:, :space.dim]))))
        for li, lat in enumerate(racing):
            latency_best[lat] = float(divergence[:, li].min())
        score = divergence.min(axis=1)
        row, col = np.unravel_index(int(np.argmin(divergence)), divergence.shape)
        best.u, best.divergence, best.latency = design[row].copy(), float(divergence[row, col]), racing[col]
        best.evaluations += divergence.size
        means = []
        for index in np.argsort(score):  # the best points at least 0.2 apart (in the unit box)
            if len(means) < starts and all(np.linalg.norm(design[index] - m) >= 0.2 for m in means):
                means.append(design[index])
        history.append({"generation": 0, "stage": f"{stage} (initial design)", "best": best.divergence,
                        "population_best": best.divergence, "population_median": float(np.median(score)),
                        "latency": int(best.latency), "racing": list(racing), "elapsed_s": time.monotonic() - started})
    runs = [make(mean, i) for i, mean in enumerate(means)] if dim else []
    run_best = [math.inf] * max(1, len(runs))
    sim = OpenLoopSimulator(task, episodes, popsize * max(1, len(runs)), racing, control_dt, nthread)
    for generation in range(generations):
        if runs:
            candidates = np.stack([run.ask() for run in runs for _ in range(popsize)])
        else:
            candidates = np.zeros((1, 0))
        divergence = sim.divergence(sim.errors(sim.run(space.decode(candidates[:, :space.dim]))))  # (P, L)
        for li, lat in enumerate(racing):
            latency_best[lat] = min(latency_best[lat], float(divergence[:, li].min()))
        fitness = divergence.min(axis=1)  # a candidate's fitness: its best latency
        winner = int(np.argmin(fitness))
        if fitness[winner] < best.divergence:
            best.u, best.divergence = candidates[winner].copy(), float(fitness[winner])
            best.latency = racing[int(np.argmin(divergence[winner]))]
        for i, run in enumerate(runs):
            part = slice(i * popsize, (i + 1) * popsize)
            run.tell([(x, float(f)) for x, f in zip(candidates[part], fitness[part], strict=True)])
            run_best[i] = min(run_best[i], float(fitness[part].min()))
        best.generations = generation + 1
        best.evaluations += divergence.size
        history.append({"generation": best.generations, "stage": stage, "best": best.divergence,
                        "population_best": float(fitness[winner]), "population_median": float(np.median(fitness)),
                        "latency": int(best.latency), "racing": list(racing), "runs": len(runs),
                        "elapsed_s": time.monotonic() - started})
        if progress is not None:
            progress.advance(note=f"{stage}: best divergence {best.divergence:.4g} rad, latency {best.latency}"
                             + (f" (racing {racing})" if len(racing) > 1 else "")
                             + (f", {len(runs)} runs" if len(runs) > 1 else ""))
        if best.generations >= latency_race and (len(racing) > 1 or len(runs) > 1):
            racing = [min(racing, key=lambda lat: latency_best[lat])]
            keep = int(np.argmin(run_best))
            runs, run_best = runs[keep:keep + 1], run_best[keep:keep + 1]
            sim = OpenLoopSimulator(task, episodes, popsize * max(1, len(runs)), racing, control_dt, nthread)
        if deadline is not None and time.monotonic() >= deadline:
            break
        if runs and all(run.should_stop() for run in runs):
            break
    best.u = best.u[:space.dim]
    best.mean = np.clip(runs[0].mean, 0.0, 1.0)[:space.dim] if len(runs) == 1 else None
    return best


class _StopPolish(Exception):
    """The polish's time or iterations are up (raised in its residual or Jacobian call, caught around the solver)."""


def _polish(task: Task, episodes: Sequence[EpisodeData], control_dt: float, space: ParameterSpace,
            start_u: np.ndarray, latency: int, *, iterations: int, deadline: float | None, nthread: int, progress,
            history: list[dict], first_generation: int) -> _StageResult:
    """Least squares on the residuals (every compared difference, :meth:`OpenLoopSimulator.residuals`)
    from ``start_u`` at one latency: scipy's trust-region reflective solver, bounded to the unit box.

    The Jacobian is forward differences of :data:`FD_STEP`: the ``dim`` perturbed candidates run
    in one batched simulation, so an iteration costs about one CMA-ES generation. Near the optimum
    the problem is a smooth least-squares problem, which a Gauss-Newton step solves in a few
    iterations where CMA-ES needs hundreds of generations (the per-joint scales, and the friction
    loss, which trades off against the damping and gain scales: the dead band is its ratio to kp).
    """
    from scipy.optimize import least_squares

    started = time.monotonic()
    single = OpenLoopSimulator(task, episodes, 1, [latency], control_dt, nthread)
    perturbed = OpenLoopSimulator(task, episodes, space.dim, [latency], control_dt, nthread)
    best = _StageResult("polish", np.clip(start_u, 0.0, 1.0), latency, math.inf, None, 0, space.dim)
    last: dict = {}  # the newest residual evaluation: u, r, divergence (the Jacobian's base point)

    def finite(r: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(r), r, 1.0)  # a diverged sim: a large residual, so the step is refused

    def residuals(u: np.ndarray) -> np.ndarray:
        if deadline is not None and time.monotonic() >= deadline:
            raise _StopPolish
        r = finite(single.residuals(single.run(space.decode(u[None])))[0, 0])
        divergence = float(np.sqrt(np.mean(r * r)))
        best.evaluations += 1
        if divergence < best.divergence:
            best.u, best.divergence = u.copy(), divergence
        last.update(u=u.copy(), r=r, divergence=divergence)
        return r

    def jacobian(u: np.ndarray) -> np.ndarray:
        if best.generations >= iterations or (deadline is not None and time.monotonic() >= deadline):
            raise _StopPolish
        base = last["r"] if np.array_equal(last.get("u"), u) else residuals(u)
        step = np.where(u + FD_STEP <= 1.0, FD_STEP, -FD_STEP)
        points = np.repeat(u[None], space.dim, axis=0)
        points[np.arange(space.dim), np.arange(space.dim)] += step
        moved = finite(perturbed.residuals(perturbed.run(space.decode(points)))[:, 0])  # (dim, R)
        best.generations += 1
        best.evaluations += space.dim
        history.append({"generation": first_generation + best.generations, "stage": "polish",
                        "best": best.divergence, "population_best": last["divergence"],
                        "population_median": last["divergence"], "latency": int(latency),
                        "racing": [int(latency)], "elapsed_s": time.monotonic() - started})
        if progress is not None:
            progress.advance(note=f"polish: best divergence {best.divergence:.4g} rad, latency {latency}")
        return ((moved - base) / step[:, None]).T

    # Contacts make the residuals rough at small scales, where the trust region can collapse
    # (scipy's xtol stop) far from the optimum: then a fresh start from the best point, while it helps.
    while best.generations < iterations:
        before = best.divergence
        try:
            least_squares(residuals, best.u, jac=jacobian, bounds=(0.0, 1.0), method="trf", x_scale="jac",
                          xtol=1e-10, ftol=1e-10, gtol=1e-10, max_nfev=4 * iterations + 1)
        except _StopPolish:
            break
        if not best.divergence < (1 - MIN_IMPROVEMENT) * before:
            break
    return best


def fit(task: Task, episodes: Sequence[EpisodeData], control_dt: float, space: ParameterSpace,
        latencies: Sequence[int], *, generations: int = 150, population: int | None = None, sigma: float = 0.2,
        polish_iterations: int = 20, initial_design: int = 32, starts: int = 3, seed: int = 0,
        latency_race: int = 8, max_time_s: float | None = None, nthread: int = 0, progress=None,
        sources: Sequence[dict] | None = None) -> FitResult:
    """CMA-ES (every generation one batched simulation), then a least-squares polish.

    CMA-ES searches globally from the nominal model, with one damping and one gain scale for all
    joints when a polish follows (few parameters: robust from a nominal start), and races the
    latency. The polish (:func:`_polish`, ``polish_iterations`` Jacobians) then refines every
    parameter of ``space`` (per-joint scales if it has them) from CMA-ES's best, at its latency.
    With ``max_time_s``, CMA-ES stops at ``1 - POLISH_TIME_SHARE`` of it, so the polish runs.
    ``progress``: a :class:`toolkit.progress.CountProgress`-like object (``advance(n, note=...)``)
    counting ``generations + polish_iterations`` steps.
    """
    start = time.monotonic()
    latencies = tuple(latencies)
    polish = polish_iterations > 0 and space.dim > 0
    deadline = None if max_time_s is None else start + max_time_s
    search_deadline = None if max_time_s is None else start + max_time_s * (1 - POLISH_TIME_SHARE * polish)
    history: list[dict] = []
    search = replace(space, shared=True) if polish else space
    stages = [_cma_stage(task, episodes, control_dt, search, search.nominal(), sigma, generations, latencies,
                         population=population, seed=seed, latency_race=latency_race, deadline=search_deadline,
                         nthread=nthread, progress=progress, history=history, stage="CMA-ES",
                         initial_design=initial_design, starts=starts)]
    if progress is not None and stages[0].generations < generations:  # converged or out of time: no more to come
        progress.advance(generations - stages[0].generations, note="CMA-ES done")
    finalists = [search.decode(stages[0].u[None])]
    if stages[0].mean is not None:
        finalists.append(search.decode(stages[0].mean[None]))
    if polish:
        polished = _polish(task, episodes, control_dt, space, space.encode(finalists[0]), stages[0].latency,
                           iterations=polish_iterations, deadline=deadline, nthread=nthread, progress=progress,
                           history=history, first_generation=stages[0].generations)
        stages.append(polished)
        finalists.append(space.decode(polished.u[None]))
        if progress is not None and polished.generations < polish_iterations:  # converged early or out of time
            progress.advance(polish_iterations - polished.generations, note="polish done")
    # The final values: the stages' best candidates and CMA-ES means, each re-checked at every latency.
    check = OpenLoopSimulator(task, episodes, len(finalists), latencies, control_dt, nthread)
    candidates = CandidateParams(*(np.concatenate([getattr(f, name) for f in finalists]) for name in
                                   ("offsets", "damping", "gain", "friction_loss", "object_friction")))
    errors = check.errors(check.run(candidates))
    divergence = check.divergence(errors)
    row, col = np.unravel_index(int(np.argmin(divergence)), divergence.shape)
    params, chosen_latency = finalists[row], latencies[col]
    channels = check.channel_names()
    nominal = Calibration.nominal(task.robot.name, task.name, task.robot.joint_names)
    before_sim = OpenLoopSimulator(task, episodes, 1, [0], control_dt, nthread)
    before_errors = before_sim.errors(before_sim.run(CandidateParams.of([nominal])))
    before = before_sim.channel_divergence(before_errors)[0, 0]
    after = check.channel_divergence(errors)[row, col]
    total_before = float(before_sim.divergence(before_errors)[0, 0])
    total_after = float(divergence[row, col])
    at_bounds = space.at_bounds(params)
    if len(latencies) > 1 and chosen_latency == max(latencies):
        at_bounds.append("action latency (the largest candidate: raise --max-latency)")
    elapsed = time.monotonic() - start
    applied = episodes[0].applied_offsets
    applied = np.zeros(task.robot.num_joints) if applied is None else applied

    def per_episode(sim, errs) -> dict[str, float]:
        sums = errs.sum(axis=-1)  # (P, L, E)
        return {ep.source: float(np.sqrt(total / (ep.steps * errs.shape[-1])))
                for ep, total in zip(episodes, sums.reshape(-1, len(episodes))[0], strict=True)}

    searched = stages[0].generations
    polished = stages[1].generations if polish else 0
    fit_record = {
        "logs": list(sources or _sources(episodes)),
        "episodes": [ep.source for ep in episodes],
        "steps": int(sum(ep.steps for ep in episodes)),
        "divergence_before": {**dict(zip(channels, map(float, before), strict=True)), "total": total_before},
        "divergence_after": {**dict(zip(channels, map(float, after), strict=True)), "total": total_after},
        "divergence_ratio": total_before / total_after if total_after > 0 else math.inf,
        "episode_divergence_before": per_episode(before_sim, before_errors),
        "episode_divergence_after": per_episode(check, errors[row:row + 1, col:col + 1]),
        "divergence_by_latency": {int(lat): float(divergence[row, i]) for i, lat in enumerate(latencies)},
        "offsets_applied_in_logs": applied.tolist(),
        "fitted": list(space.groups) + (["latency"] if len(latencies) > 1 else []),
        "at_bounds": at_bounds,
        "optimiser": {"library": "cmaes", "algorithm": "CMA-ES", "version": _version("cmaes"),
                      "generations": searched, "generations_asked": generations,
                      "population": stages[0].population, "shared_scales": search.shared,
                      "sigma": sigma, "initial_design": initial_design, "latency_candidates": list(latencies),
                      "latency_race": latency_race, "search_space": space.describe(),
                      "evaluations": stages[0].evaluations},
        "polish": {"library": "scipy", "solver": "scipy.optimize.least_squares (trf, bounded)",
                   "version": _version("scipy"), "iterations": polished, "iterations_asked": polish_iterations,
                   "evaluations": stages[1].evaluations if polish else 0, "finite_difference_step": FD_STEP},
        "seed": seed,
        "toolkit_version": toolkit.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": round(elapsed, 2),
    }
    calibration = Calibration(
        robot=task.robot.name, task=task.name, joint_names=task.robot.joint_names,
        joint_offsets=params.offsets[0] + applied, joint_damping_scale=params.damping[0],
        actuator_gain_scale=params.gain[0],
        friction_loss_scale=float(params.friction_loss[0, 0]),
        object_friction_scale=float(params.object_friction[0, 0]), action_latency=int(chosen_latency), fit=fit_record)
    return FitResult(calibration, total_after < (1 - MIN_IMPROVEMENT) * total_before,
                     fit_record["divergence_before"], fit_record["divergence_after"],
                     fit_record["divergence_by_latency"], at_bounds, history, elapsed, searched, polished,
                     space.names(), channels)


def _sources(episodes: Sequence[EpisodeData]) -> list[dict]:
    files: dict[str, list[int]] = {}
    for ep in episodes:
        files.setdefault(ep.file, []).append(ep.index)
    return [{"file": name, "episodes": indices} for name, indices in files.items()]


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


# --- synthetic logs and excitations ------------------------------------------------------------------
def excitation_targets(task: Task, steps: int = 80, seed: int = 0, clearance: float = 0.02) -> np.ndarray:
    """Joint targets (steps, J) that excite every joint for a calibration log, in free air.

    Alternates limit visits (every joint visits both of its limits: where a zero offset shows, the
    physical joint stopping short of the commanded angle) with random poses held 0-2 extra control
    steps (step responses of every size: damping, gain, latency, gravity sag). Moves are ramps of
    at most ``max_joint_speed * control_dt`` per step (what deploy's safety clamp allows), within
    the limits, and keep the robot's colliding geoms ``clearance`` m from the object's: contacts
    make an open-loop replay chaotic (a 2 % parameter change can flip how a finger strikes the
    valve), so the excitation leaves the object alone; the task's own episodes show the object's
    friction. Kinematic chains (a finger's joints) move independently of each other.
    """
    import mujoco

    robot = task.robot
    model = task.build_model()
    task.bind(model)
    data = mujoco.MjData(model)
    table = task.dr_table()
    object_geoms = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, name)
                    for name in (table.object_geoms if table is not None else ())]
    colliding = np.flatnonzero((model.geom_contype != 0) | (model.geom_conaffinity != 0))
    robot_geoms = [int(g) for g in colliding if g not in object_geoms and model.geom_bodyid[g] != 0]
    qpos_adr = np.asarray(task.indices.qpos_adr)
    low, high, pose = robot.joint_low, robot.joint_high, robot.default_pose
    max_step = robot.max_joint_speed * robot.control_dt
    rng = np.random.default_rng(seed)
    chains = _kinematic_chains(model, [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
                                       for name in robot.joint_names])

    def clear(q: np.ndarray) -> bool:
        data.qpos[qpos_adr] = q
        mujoco.mj_kinematics(model, data)
        return all(mujoco.mj_geomDistance(model, data, g, o, clearance, None) >= clearance
                   for g in robot_geoms for o in object_geoms)

    def ramp(start: np.ndarray, goal: np.ndarray) -> list[np.ndarray] | None:
        """Poses from start to goal, each step within max_step, clear along the way (None: blocked)."""
        count = max(1, math.ceil(float(np.max(np.abs(goal - start))) / max_step - 1e-9))
        if not all(clear(start + t * (goal - start)) for t in np.linspace(0.0, 1.0, 4 * count + 1)):
            return None
        return [start + (goal - start) * (i / count) for i in range(1, count + 1)]

    def route(start: np.ndarray, goal: np.ndarray, chain: np.ndarray, last: int | None) -> list[np.ndarray] | None:
        """A clear path moving only ``chain``: straight, or the chain's other joints first and
        then ``last`` (or the reverse), or through the chain's default pose."""
        middles = [None]
        if last is not None:
            late = np.zeros(len(start), dtype=bool)
            late[last] = True
            middles += [np.where(late, start, goal), np.where(late, goal, start)]
        via_default = start.copy()
        via_default[chain] = pose[chain]
        middles.append(via_default)
        for middle in middles:
            if middle is None:
                path = ramp(start, goal)
            else:
                first = ramp(start, middle) if clear(middle) else None
                second = ramp(middle, goal) if first is not None else None
                path = None if second is None else first + second
            if path is not None:
                return path
        return None

    def chain_move(current: np.ndarray, chain: np.ndarray, visits: set | None) -> tuple[list[np.ndarray], set]:
        """A clear path for ``chain`` to a random pose (``visits`` None), or to the corner of its
        joint limits that covers most of the pending ``visits`` (joint, side); then the visits made."""
        if visits is not None:
            corners = [np.array(c) for c in itertools.product((0, 1), repeat=len(chain))]
            rng.shuffle(corners)
            corners.sort(key=lambda c: -sum((int(j), int(side)) in visits for j, side in zip(chain, c, strict=True)))
            for corner in corners[:8]:
                covered = {(int(j), int(side)) for j, side in zip(chain, corner, strict=True)} & visits
                if not covered:
                    break
                goal = current.copy()
                goal[chain] = np.where(corner == 1, high[chain], low[chain])
                if clear(goal):
                    path = route(current, goal, chain, None)
                    if path is not None:
                        return path, covered
            for joint, side in sorted(visits):  # no corner: one joint at its limit, the others anywhere
                for _ in range(30):
                    goal = current.copy()
                    goal[chain] = low[chain] + (high[chain] - low[chain]) * rng.uniform(0.05, 0.95, len(chain))
                    goal[joint] = high[joint] if side else low[joint]
                    path = route(current, goal, chain, joint) if clear(goal) else None
                    if path is not None:
                        return path, {(joint, side)}
            return [], set(visits)  # these limits cannot be reached clear of the object: given up
        for _ in range(60):
            goal = current.copy()
            goal[chain] = low[chain] + (high[chain] - low[chain]) * rng.uniform(0.05, 0.95, len(chain))
            path = route(current, goal, chain, None) if clear(goal) else None
            if path is not None:
                return path, set()
        return [], set()

    def all_visits(chain: np.ndarray) -> set:
        return {(int(joint), side) for joint in chain for side in (0, 1)}

    pending = [all_visits(chain) for chain in chains]
    targets: list[np.ndarray] = []
    current = pose.copy()
    limit_turn = True
    while len(targets) < steps:
        paths = []
        for i, chain in enumerate(chains):
            if limit_turn:
                if not pending[i]:
                    pending[i] = all_visits(chain)  # every limit visited: another round
                path, done = chain_move(current, chain, pending[i])
                pending[i] -= done
            elif rng.uniform() < 0.8:
                path, _ = chain_move(current, chain, None)
            else:
                path = []  # this chain holds still
            if path:
                paths.append((chain, path))
        length = max((len(path) for _, path in paths), default=0)
        for k in range(length):
            step = current.copy()
            for chain, path in paths:  # chains do not touch each other: their moves combine
                step[chain] = path[min(k, len(path) - 1)][chain]
            targets.append(step)
        if targets:
            current = targets[-1]
        targets += [current] * (2 if limit_turn else int(rng.integers(0, 3)))
        limit_turn = not limit_turn
    return np.clip(np.stack(targets[:steps]), low, high)


def _kinematic_chains(model, joint_ids: Sequence[int]) -> list[np.ndarray]:
    """Groups of the given joints (indices into ``joint_ids``) whose bodies lie on one branch of the
    kinematic tree (a finger), which move without touching the other groups."""
    def ancestors(body: int) -> set[int]:
        out = set()
        while body > 0:
            out.add(body)
            body = int(model.body_parentid[body])
        return out

    bodies = [int(model.jnt_bodyid[j]) for j in joint_ids]
    lines = [ancestors(b) for b in bodies]
    group = list(range(len(bodies)))

    def find(i: int) -> int:
        while group[i] != i:
            i = group[i]
        return i

    for a in range(len(bodies)):
        for b in range(a + 1, len(bodies)):
            if bodies[a] in lines[b] or bodies[b] in lines[a]:
                group[find(a)] = find(b)
    roots = sorted({find(i) for i in range(len(bodies))})
    return [np.array([i for i in range(len(bodies)) if find(i) == root]) for root in roots]


def simulate_episodes(task: Task, episodes: Sequence[EpisodeData], control_dt: float, calibration: Calibration,
                      nthread: int = 0) -> list[EpisodeData]:
    """What a robot with ``calibration``'s parameters would have logged for the episodes' joint targets,
    started from the same physical state: the readings of a "hardware" log with hidden parameters.
    The first readings of ``episodes`` are taken as physical (offset-free) angles."""
    shifted = []
    for ep in episodes:  # reported first readings of the hidden robot: physical + its offsets
        readings = {k: v.copy() for k, v in ep.readings.items()}
        readings["joint_pos"][0] = reported_angle(readings["joint_pos"][0], calibration.joint_offsets)
        shifted.append(EpisodeData(ep.source, ep.file, ep.index, readings, ep.joint_targets, ep.reset_targets,
                                   ep.task_state))
    sim = OpenLoopSimulator(task, shifted, 1, [calibration.action_latency], control_dt, nthread)
    record = [name for name in task.read(sim.view)]
    simulated = sim.run(CandidateParams.of([calibration]), record)
    out = []
    for ei, ep in enumerate(shifted):
        readings = {name: simulated[name][0, 0, ei, :ep.steps].copy() for name in record}
        for name in readings:
            if is_angle(name):  # hardware reports angles wrapped
                readings[name] = wrap(readings[name])
        out.append(EpisodeData(ep.source, ep.file, ep.index, readings, ep.joint_targets, ep.reset_targets,
                               ep.task_state))
    return out


def write_log(path: Path, task: Task, episodes: Sequence[EpisodeData], control_dt: float, attrs: dict | None = None,
              overwrite: bool = False) -> Path:
    """Write ``episodes`` as a deployment log in the hardware layout (``deploy.log``: readings,
    joint_targets, reset/joint_targets, task_state, time, zero obs/actions; no sim state)."""
    from toolkit.contract.policy import PolicyMetadata, encode_metadata

    j = task.robot.num_joints
    first = episodes[0]
    step_fields = {"obs": Field((task.obs_layout.size,), "float32"), "actions": Field((j,), "float32"),
                   "joint_targets": Field((j,)), "time": Field(()),
                   **{f"readings/{k}": Field(v.shape[1:]) for k, v in first.readings.items()},
                   **{f"task_state/{k}": Field(np.shape(v)) for k, v in first.task_state.items()}}
    metadata = PolicyMetadata.for_task(task, run_name="synthetic", training_step=0,
                                       toolkit_version=toolkit.__version__)
    log_attrs = {"backend": "dclaw", "backend_info": {"backend": "synthetic"}, "robot": task.robot.name,
                 "task": task.name, "control_dt": control_dt, "rate_hz": 1.0 / control_dt,
                 "policy_metadata": encode_metadata(metadata), "toolkit_version": toolkit.__version__,
                 **(attrs or {})}
    writer = LogWriter(path, len(episodes), step_fields, {"joint_targets": Field((j,))}, log_attrs, overwrite=overwrite)
    try:
        for n, ep in enumerate(episodes):
            writer.set(n, {"reset/joint_targets": ep.reset_targets})
            for k in range(ep.steps):
                writer.append(n, {"obs": np.zeros(task.obs_layout.size, np.float32),
                                  "actions": np.zeros(j, np.float32), "joint_targets": ep.joint_targets[k],
                                  "time": np.float64(k * control_dt),
                                  **{f"readings/{name}": value[k] for name, value in ep.readings.items()},
                                  **{f"task_state/{name}": value for name, value in ep.task_state.items()}})
            writer.end_episode(n, 0, "synthetic", ep.steps, None, 0.0)
    finally:
        writer.close()
    return Path(path)


# --- report and plot ---------------------------------------------------------------------------------
def report_lines(result: FitResult) -> list[str]:
    """The parameters, their bounds flags, and the divergence per reading before and after."""
    c = result.calibration
    flagged = set(result.at_bounds)
    lines = [f"fitted in {result.elapsed_s:.1f} s, {result.generations} CMA-ES generations and "
             f"{result.polish_iterations} polish iterations: {c.summary()}"]
    lines.append(f"{'joint':8s} {'offset rad':>11s} {'damping x':>10s} {'gain x':>8s}")
    for i, name in enumerate(c.joint_names):
        marks = [label for label in (f"offset {name}", f"damping {name}", f"gain {name}") if label in flagged]
        lines.append(f"{name:8s} {c.joint_offsets[i]:+11.4f} {c.joint_damping_scale[i]:10.3f} "
                     f"{c.actuator_gain_scale[i]:8.3f}" + (f"   AT BOUND: {', '.join(marks)}" if marks else ""))
    lines.append(f"friction loss x{c.friction_loss_scale:.3f}, object friction x{c.object_friction_scale:.3f}, "
                 f"action latency {c.action_latency} step(s) (divergence by latency: "
                 + ", ".join(f"{lat}: {d:.4g}" for lat, d in result.latency_divergence.items()) + ")")
    if result.at_bounds:
        lines.append("AT BOUND (the search bound, not the data, decided these; widen --bound-widening / "
                     f"--offset-bound or check the logs): {', '.join(result.at_bounds)}")
    lines.append("divergence (RMS rad)  before -> after")
    for name in result.channel_names + ["total"]:
        lines.append(f"  {name:14s} {result.divergence_before[name]:.4g} -> {result.divergence_after[name]:.4g}")
    before, after = result.divergence_before["total"], result.divergence_after["total"]
    lines.append(f"divergence ratio {before / after if after > 0 else math.inf:.2f}")
    return lines


def write_plot(path: Path, task: Task, episodes: Sequence[EpisodeData], control_dt: float, result: FitResult,
               episode: int = 0, nthread: int = 0) -> None:
    """Logged, nominal-sim and fitted-sim readings of one episode, and the optimiser's progress."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not 0 <= episode < len(episodes):
        raise CalibrationInputError(f"--plot-episode {episode}: {len(episodes)} episode(s) were used")
    chosen = [episodes[episode]]
    nominal = Calibration.nominal(task.robot.name, task.name, task.robot.joint_names)
    _, simulated, _ = evaluate(task, chosen, control_dt, [nominal, result.calibration], nthread)
    ep = chosen[0]
    panels = [("joint_pos", j, name) for j, name in enumerate(task.robot.joint_names)]
    panels += [(name, i, name if ep.readings[name].shape[1] == 1 else f"{name}[{i}]")
               for name in compared_readings(task) if name != "joint_pos" for i in range(ep.readings[name].shape[1])]
    cols = 4
    rows = math.ceil((len(panels) + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), constrained_layout=True, squeeze=False)
    time_axis = np.arange(ep.steps) * control_dt
    for ax, (name, column, label) in zip(axes.flat, panels, strict=False):
        logged = ep.readings[name][:, column]
        series = [("logged", logged, dict(color="black", lw=1.6)),
                  ("nominal sim", simulated[0][name][0, :ep.steps, column], dict(color="tab:red", lw=1, ls="--")),
                  ("fitted sim", simulated[1][name][0, :ep.steps, column], dict(color="tab:blue", lw=1))]
        for text, values, style in series:
            if is_angle(name):  # unwrapped around the logged angle
                values = logged + wrap(values - logged)
            ax.plot(time_axis, values, label=text, **style)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    progress_ax = axes.flat[len(panels)]
    gens = [h["generation"] for h in result.history]
    progress_ax.semilogy(gens, [h["best"] for h in result.history], label="best so far")
    progress_ax.semilogy(gens, [h["population_median"] for h in result.history], label="population median", lw=0.8)
    progress_ax.set(title="fit progress: CMA-ES, then the polish", xlabel="generation, then polish iteration",
                    ylabel="divergence (rad)")
    progress_ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) + 1:]:
        ax.axis("off")
    fig.suptitle(f"{ep.source}: logged vs nominal and fitted sim (divergence {result.divergence_before['total']:.3g}"
                 f" -> {result.divergence_after['total']:.3g} rad)", fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- command line --------------------------------------------------------------------------------------
def run(args: Args) -> int:
    """Everything ``main`` does; returns the exit status."""
    from toolkit.progress import CountProgress

    def fail(message) -> int:
        print(f"deploy.calibrate: {message}", file=sys.stderr)
        return 2

    if args.generations < 1:
        return fail(f"--generations must be >= 1, got {args.generations}")
    if args.polish_iterations < 0:
        return fail(f"--polish-iterations must be >= 0, got {args.polish_iterations}")
    if args.population is not None and args.population < 2:
        return fail(f"--population must be >= 2, got {args.population}")
    if not 0 < args.sigma <= 1:
        return fail(f"--sigma must lie in (0, 1] (a fraction of each search range), got {args.sigma}")
    if args.plot is not None and args.plot.suffix.lower() not in (".png", ".pdf", ".svg"):
        return fail(f"--plot {args.plot}: use a .png, .pdf or .svg file name")
    out_dir = args.out.parent if str(args.out.parent) else Path(".")
    if not out_dir.is_dir() or not os.access(out_dir, os.W_OK):
        return fail(f"--out {args.out}: directory {out_dir} does not exist or is not writable")
    groups = [g for g, on in zip(GROUPS, (args.fit_offsets, args.fit_damping, args.fit_gain, args.fit_friction_loss,
                                          args.fit_object_friction), strict=True) if on]
    try:
        task, control_dt, episodes = load_episodes(args.logs, args.task, args.episodes)
        space = ParameterSpace.for_task(task, groups, args.offset_bound, args.bound_widening, args.shared_scales)
        latencies = latency_candidates(task, args.fit_latency, args.max_latency)
        if args.plot is not None and not 0 <= args.plot_episode < len(episodes):
            raise CalibrationInputError(f"--plot-episode {args.plot_episode}: {len(episodes)} episode(s) are used")
    except (CalibrationInputError, CalibrationError) as error:
        return fail(error)
    if not space.dim and len(latencies) == 1:
        return fail("nothing to fit: every parameter group and the latency are switched off")
    steps = sum(ep.steps for ep in episodes)
    print(f"deploy.calibrate: {task.robot.name}/{task.name}, {len(episodes)} episode(s), {steps} steps; fitting "
          f"{space.dim} parameter(s) ({', '.join(space.groups) or 'none'})"
          + (f" and the latency ({', '.join(map(str, latencies))} steps)" if len(latencies) > 1 else ""), flush=True)
    with CountProgress("generations + polish iterations", args.generations + args.polish_iterations) as progress:
        result = fit(task, episodes, control_dt, space, latencies, generations=args.generations,
                     population=args.population, sigma=args.sigma, polish_iterations=args.polish_iterations,
                     seed=args.seed, latency_race=args.latency_race, max_time_s=args.max_time_s,
                     nthread=args.threads, progress=progress)
    for line in report_lines(result):
        print(line)
    if args.plot is not None:
        write_plot(args.plot, task, episodes, control_dt, result, args.plot_episode, args.threads)
        print(f"deploy.calibrate: wrote {args.plot}")
    before, after = result.divergence_before["total"], result.divergence_after["total"]
    if not result.improved:
        if not args.force:
            print(f"deploy.calibrate: the fit did not improve the divergence ({before:.4g} -> {after:.4g} rad, less "
                  f"than {MIN_IMPROVEMENT:.0%} better): nothing written. More or longer episodes, more --generations, "
                  "or --force to write it anyway", file=sys.stderr)
            return 1
        print(f"deploy.calibrate: warning: the fit did not improve the divergence ({before:.4g} -> {after:.4g} rad); "
              "writing it because of --force", file=sys.stderr)
    result.calibration.save(args.out)
    print(f"deploy.calibrate: wrote {args.out} (hash {result.calibration.content_hash()}); use it with "
          f"python -m deploy.run --backend sim --calibration {args.out} and "
          f"python -m train.{task.robot.name} --calibration {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(tyro.cli(Args, args=argv, prog="python -m deploy.calibrate"))


if __name__ == "__main__":
    sys.exit(main())
