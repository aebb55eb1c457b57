"""Sim-to-real calibration: the fitted parameters of one robot, their file, and how they apply.

A :class:`Calibration` says how a real robot differs from its nominal simulation model:

* per-joint zero offsets ``o`` (rad): an uncalibrated sensor reports ``q + o`` for the physical
  (model) angle ``q``, and an uncalibrated servo commanded ``c`` goes to the physical angle ``c - o``
  (:func:`reported_angle`, :func:`physical_angle`, :func:`physical_target`, :func:`servo_command`);
* per-joint damping and actuator-gain scales, a friction-loss scale of the robot's joints and a
  friction scale of the object's joints (the valve hinge: damping and friction loss together,
  the resistance a finger feels when it turns the valve), each multiplying the nominal model's
  value (:func:`apply_scales`, :meth:`Calibration.apply`);
* the action latency in whole control steps: commands reach the actuators ``L`` control steps
  late, the first ``L`` steps of an episode hold the reset targets (:func:`delayed_commands`,
  :class:`LatencyLine`).

Offsets and latency are not model fields: a simulator (the deploy sim backend emulating an
uncalibrated robot), the hardware backend (offsets when converting ticks and radians) and the
fit (``deploy.calibrate``) call the pure functions above. The scales are written once against
:class:`~toolkit.contract.model_fields.ModelFields` and the array API: the same code edits a
population of candidate models in one ``mujoco.batch.Batch`` (``BatchFields``), one
``MjModel`` (``SingleModelFields``: the deploy sim, the trainer's nominal model) or a training
sim's torch fields.

The file (YAML, :meth:`Calibration.save`/:func:`load_calibration`) is self-describing: robot,
task, the values per joint name, and how they were found (logs and episodes, divergence per
reading before and after, optimiser settings, seed, toolkit version, values at a bound) plus a
content hash of the values (:meth:`Calibration.content_hash`), checked when the file is read.

Imports neither torch nor (at import time) mujoco.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from array_api_compat import array_namespace
from array_api_compat import device as array_device

from toolkit.contract.model_fields import ModelFields

if TYPE_CHECKING:
    import mujoco

    from toolkit.contract.task import Task

Array = Any

FORMAT = "sim2real-calibration/1"

#: The per-joint arrays of a calibration, in the file's ``parameters`` order.
JOINT_PARAMETERS = ("joint_offsets", "joint_damping_scale", "actuator_gain_scale")
#: The scalar scales of a calibration.
SCALAR_PARAMETERS = ("friction_loss_scale", "object_friction_scale")
#: Model fields :func:`apply_scales` writes (robot and object dof damping and friction loss,
#: position-actuator gain and bias).
CALIBRATED_FIELDS = ("dof_damping", "dof_frictionloss", "actuator_gainprm", "actuator_biasprm")


class CalibrationError(ValueError):
    """A calibration file or value that cannot be used (the message names the field and the fix)."""


# --- offsets and latency: pure array-API functions --------------------------------------------
def reported_angle(physical, offsets):
    """What a sensor with zero offsets ``offsets`` reports for the physical angles: ``q + o``."""
    return physical + offsets


def physical_angle(reported, offsets):
    """The physical angle behind a sensor's report: ``reading - o`` (a calibrated hardware reading)."""
    return reported - offsets


def physical_target(command, offsets):
    """Where a servo with zero offsets ``offsets`` physically goes when commanded ``c``: ``c - o``."""
    return command - offsets


def servo_command(target, offsets):
    """The command that makes a servo with zero offsets ``offsets`` go to the physical angle
    ``target``: ``target + o`` (the hardware backend's radians -> ticks with a calibration)."""
    return target + offsets


def delayed_commands(commands, reset_targets, latency: int):
    """The targets that reach the actuators at each control step when commands arrive ``latency``
    steps late: row ``k`` is ``commands[k - latency]``, the first ``latency`` rows hold
    ``reset_targets``. ``commands`` (T, J) or (n, T, J); ``reset_targets`` (J,) or (n, J)."""
    latency = _latency(latency)
    xp = array_namespace(commands)
    steps = commands.shape[-2]
    if latency == 0:
        return commands
    held = xp.broadcast_to(xp.expand_dims(reset_targets, axis=-2),
                           (*commands.shape[:-2], min(latency, steps), commands.shape[-1]))
    if latency >= steps:
        return xp.astype(held, commands.dtype, copy=True)
    return xp.concat([xp.astype(held, commands.dtype), commands[..., :steps - latency, :]], axis=-2)


class LatencyLine:
    """Commands of ``n`` robots reaching their actuators ``latency`` control steps late, one step
    at a time (a simulator's control loop). :meth:`reset` envs with their reset targets, then each
    :meth:`push` of this step's commands (n, J) returns the targets that act now: the commands
    pushed ``latency`` steps ago, or a reset env's reset targets for its first ``latency`` steps.

    A ring of ``latency + 1`` rows preallocated like ``like`` (n, J; numpy or torch, its device):
    no allocation per step. ``push`` returns a view of the ring, valid until the next ``push``.
    """

    def __init__(self, latency: int, like) -> None:
        self.latency = _latency(latency)
        xp = array_namespace(like)
        self._ring = xp.zeros((self.latency + 1, *like.shape), dtype=like.dtype, device=array_device(like))
        self._write = 0

    def reset(self, reset_targets, ids=None) -> None:
        """Envs ``ids`` (default: all) hold ``reset_targets`` (len(ids), J) until their commands arrive."""
        if ids is None:
            self._ring[...] = reset_targets[None]
        else:
            self._ring[:, ids] = reset_targets[None]

    def push(self, commands):
        """This step's ``commands`` (n, J) go in; the targets that act this step come out."""
        if self.latency == 0:
            return commands
        self._ring[self._write] = commands
        self._write = (self._write + 1) % (self.latency + 1)
        return self._ring[self._write]  # the row written `latency` pushes ago


def _latency(latency) -> int:
    if isinstance(latency, bool) or not isinstance(latency, (int, np.integer)) or latency < 0:
        raise CalibrationError(f"action latency must be a whole number of control steps >= 0, got {latency!r}")
    return int(latency)


# --- model parameters, against ModelFields -------------------------------------------------------
@dataclass(frozen=True)
class CalibrationTargets:
    """Where a calibration's scales act in a compiled model.

    Attributes:
        joint_dofs: the dof of each robot joint, (J,), spec order (damping, friction loss).
        actuators: the position actuator of each robot joint, (J,) (gain kp and bias -kp).
        object_dofs: the dofs of the object's joints (the valve hinge), (K,).
    """

    joint_dofs: np.ndarray
    actuators: np.ndarray
    object_dofs: np.ndarray


def calibration_targets(model: mujoco.MjModel, task: Task) -> CalibrationTargets:
    """The targets of ``task`` (bound to ``model``: ``task.bind(model)``): its robot's joint dofs
    and actuators, and the dofs of the joints of its DR table's ``object_bodies``."""
    import mujoco

    indices = task.indices
    joint_dofs = np.asarray(indices.dof_ids, dtype=np.int64)
    actuators = np.asarray(indices.actuator_ids, dtype=np.int64)
    if joint_dofs.shape != actuators.shape:
        raise CalibrationError(f"task '{task.name}': per-joint calibration needs one dof per actuated joint, the "
                               f"model has {len(joint_dofs)} dofs for {len(actuators)} actuators")
    table = task.dr_table()
    object_dofs = []
    for name in (table.object_bodies if table is not None else ()):
        body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)
        if body < 0:
            raise CalibrationError(f"task '{task.name}' names object body '{name}', which the model lacks")
        start, count = int(model.body_dofadr[body]), int(model.body_dofnum[body])
        object_dofs.extend(range(start, start + count) if start >= 0 else [])
    return CalibrationTargets(joint_dofs, actuators, np.asarray(object_dofs, dtype=np.int64))


def nominal_values(fields: ModelFields) -> dict[str, Array]:
    """float64 copies of env 0's values of :data:`CALIBRATED_FIELDS`: the nominal model that
    :func:`apply_scales` scales from (take them before any calibration or randomization)."""
    out = {}
    for name in CALIBRATED_FIELDS:
        value = fields.model_field(name)
        xp = array_namespace(value)
        out[name] = xp.astype(value[0], xp.float64, copy=True)
    return out


def apply_scales(fields: ModelFields, ids, nominal: Mapping[str, Array], targets: CalibrationTargets, *,
                 joint_damping, actuator_gain, friction_loss, object_friction) -> None:
    """Write scaled model values into envs ``ids`` of ``fields``: the nominal values times
    ``joint_damping`` (n, J) at the joint dofs, ``actuator_gain`` (n, J) on kp (``gainprm[:, 0]``,
    and ``biasprm[:, 1] = -kp`` so the position actuator stays consistent), ``friction_loss``
    (n, 1) on the joints' friction loss and ``object_friction`` (n, 1) on the object dofs'
    damping and friction loss. ``n = len(ids)``; arrays of the fields' namespace."""
    first = fields.model_field("dof_damping")
    xp = array_namespace(first)
    device = getattr(first, "device", None)

    def index(values) -> Array:
        return xp.asarray(np.asarray(values, dtype=np.int64), device=device)

    ids = index(ids)
    rows = ids[:, None]
    joints, actuators, objects = index(targets.joint_dofs), index(targets.actuators), index(targets.object_dofs)

    def put(name, where, value):  # in the field's own dtype (float32 on mujoco_warp)
        target = fields.model_field(name)
        target[where] = xp.astype(value, target.dtype)

    def scale(value):
        return xp.asarray(value, dtype=xp.float64, device=device)

    joint_damping, actuator_gain = scale(joint_damping), scale(actuator_gain)
    friction_loss, object_friction = scale(friction_loss), scale(object_friction)
    put("dof_damping", (rows, joints), nominal["dof_damping"][joints] * joint_damping)
    put("dof_frictionloss", (rows, joints), nominal["dof_frictionloss"][joints] * friction_loss)
    kp = nominal["actuator_gainprm"][actuators, 0] * actuator_gain
    put("actuator_gainprm", (rows, actuators, 0), kp)
    put("actuator_biasprm", (rows, actuators, 1), -kp)
    if objects.shape[0]:
        put("dof_damping", (rows, objects), nominal["dof_damping"][objects] * object_friction)
        put("dof_frictionloss", (rows, objects), nominal["dof_frictionloss"][objects] * object_friction)


# --- the calibration and its file ---------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Calibration:
    """One robot's fitted parameters and how they were found (see the module docstring).

    Attributes:
        robot, task: what it was fitted for (:meth:`check_for` refuses others).
        joint_names: the robot's joints, the order of the per-joint arrays.
        joint_offsets: zero offset per joint, rad, (J,): the sensor reports physical + offset.
        joint_damping_scale: multiplies each joint's damping, (J,).
        actuator_gain_scale: multiplies each position actuator's stiffness kp, (J,).
        friction_loss_scale: multiplies the friction loss of every robot joint.
        object_friction_scale: multiplies the object joints' damping and friction loss (the valve
            hinge: the torque it takes to turn the valve; one factor because 10 Hz joint readings
            cannot tell its viscous and dry parts apart).
        action_latency: control steps by which commands reach the actuators late.
        fit: how the values were found: ``logs`` ([{file, episodes}]), ``divergence_before`` and
            ``divergence_after`` (reading name -> RMS rad, and ``total``), ``fitted`` (the
            parameter groups fitted), ``at_bounds`` (parameters that ended at a bound),
            ``optimiser`` (settings), ``seed``, ``toolkit_version`` and more; free-form JSON data.

    Arrays are stored read-only float64; construction validates everything and raises
    :class:`CalibrationError` naming the field.
    """

    robot: str
    task: str
    joint_names: tuple[str, ...]
    joint_offsets: np.ndarray
    joint_damping_scale: np.ndarray
    actuator_gain_scale: np.ndarray
    friction_loss_scale: float = 1.0
    object_friction_scale: float = 1.0
    action_latency: int = 0
    fit: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("robot", "task"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise CalibrationError(f"calibration '{key}' must be a non-empty string, got {getattr(self, key)!r}")
        names = self.joint_names
        if isinstance(names, str) or not names or not all(isinstance(n, str) and n for n in names) \
                or len(set(names)) != len(names):
            raise CalibrationError(f"calibration 'joint_names' must be unique non-empty strings, got {names!r}")
        object.__setattr__(self, "joint_names", tuple(names))
        for key in JOINT_PARAMETERS:
            object.__setattr__(self, key, _joint_values(key, getattr(self, key), len(names),
                                                        positive=key != "joint_offsets"))
        for key in SCALAR_PARAMETERS:
            object.__setattr__(self, key, _positive(key, getattr(self, key)))
        try:
            object.__setattr__(self, "action_latency", _latency(self.action_latency))
        except CalibrationError as error:
            raise CalibrationError(f"calibration 'action_latency': {error}") from None
        if not isinstance(self.fit, Mapping):
            raise CalibrationError(f"calibration 'fit' must be a mapping, got {type(self.fit).__name__}")
        try:
            fit = json.loads(json.dumps(dict(self.fit), default=_json_default))
        except (TypeError, ValueError) as error:
            raise CalibrationError(f"calibration 'fit' must be plain data (numbers, strings, lists): {error}") from None
        object.__setattr__(self, "fit", fit)

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def nominal(cls, robot: str, task: str, joint_names: Sequence[str], **values) -> Calibration:
        """The identity calibration (no offsets, every scale 1, no latency), with ``values``
        replacing some of its fields."""
        j = len(joint_names)
        base = dict(joint_offsets=np.zeros(j), joint_damping_scale=np.ones(j), actuator_gain_scale=np.ones(j))
        return cls(robot=robot, task=task, joint_names=tuple(joint_names), **{**base, **values})

    def replace(self, **changes) -> Calibration:
        """A copy with ``changes`` (validated like a new calibration)."""
        return replace(self, **changes)

    # --- identity ----------------------------------------------------------------------------
    def values(self) -> dict:
        """The fitted values as plain data: per-joint maps (joint name -> value) and scalars."""
        out: dict[str, Any] = {}
        for key in JOINT_PARAMETERS:
            out[key] = {name: float(v) for name, v in zip(self.joint_names, getattr(self, key), strict=True)}
        for key in SCALAR_PARAMETERS:
            out[key] = float(getattr(self, key))
        out["action_latency"] = int(self.action_latency)
        return out

    def content_hash(self) -> str:
        """sha256 (first 16 hex digits) of robot, task and the values: what changes a simulation.
        The self-description (``fit``) is not hashed: refitting to the same values gives the same hash."""
        content = {"format": FORMAT, "robot": self.robot, "task": self.task, "parameters": self.values()}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self, file: str | os.PathLike | None = None) -> dict:
        """What a trained policy (its ONNX metadata ``calibration``) and a run's config.yaml record:
        ``{"hash", "file", "robot", "task", "values"}``."""
        return {"hash": self.content_hash(), "file": None if file is None else str(file), "robot": self.robot,
                "task": self.task, "values": self.values()}

    def summary(self) -> str:
        """One line: robot, task, hash and the values in short."""

        def short(values: np.ndarray) -> str:
            return "[" + " ".join(f"{v:.3g}" for v in values) + "]"

        return (f"calibration {self.content_hash()} for {self.robot}/{self.task}: offsets {short(self.joint_offsets)} "
                f"rad, damping x{short(self.joint_damping_scale)}, gain x{short(self.actuator_gain_scale)}, friction "
                f"loss x{self.friction_loss_scale:.3g}, object friction x{self.object_friction_scale:.3g}, latency "
                f"{self.action_latency} step(s)")

    def check_for(self, robot: str, task: str, joint_names: Sequence[str] | None = None) -> None:
        """Refuse to be used for another robot or task (or other joints): :class:`CalibrationError`."""
        if (robot, task) != (self.robot, self.task):
            raise CalibrationError(
                f"the calibration was fitted for robot '{self.robot}', task '{self.task}'; this run is robot '{robot}',"
                f" task '{task}'. Fit one for it: python -m deploy.calibrate LOG.h5 --out calib.yaml with logs of "
                f"'{task}'")
        if joint_names is not None and tuple(joint_names) != self.joint_names:
            raise CalibrationError(f"the calibration's joints {list(self.joint_names)} differ from robot '{robot}' "
                                   f"{list(joint_names)}: refit it with the current robot definition")

    # --- application -------------------------------------------------------------------------
    def apply(self, fields: ModelFields, targets: CalibrationTargets, nominal: Mapping[str, Array] | None = None,
              ids=None) -> None:
        """Scale the nominal model values of ``fields`` (every env, or envs ``ids``) by this
        calibration (:func:`apply_scales`). ``nominal`` defaults to the fields' values now
        (:func:`nominal_values`): pass it when the fields may already hold scaled values.
        Offsets and latency are not model fields: see :func:`physical_target`, :class:`LatencyLine`."""
        nominal = nominal_values(fields) if nominal is None else nominal
        ids = np.arange(fields.num_envs) if ids is None else np.asarray(ids, dtype=np.int64)
        n = len(ids)
        first = fields.model_field("dof_damping")
        xp = array_namespace(first)
        device = getattr(first, "device", None)

        def rows(values) -> Array:
            values = np.broadcast_to(np.asarray(values, dtype=np.float64).reshape(1, -1), (n, np.size(values)))
            return xp.asarray(np.ascontiguousarray(values), device=device)

        apply_scales(fields, ids, nominal, targets, joint_damping=rows(self.joint_damping_scale),
                     actuator_gain=rows(self.actuator_gain_scale), friction_loss=rows([self.friction_loss_scale]),
                     object_friction=rows([self.object_friction_scale]))

    # --- the file ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The file's content (plain data, YAML-ready)."""
        return {"format": FORMAT, "robot": self.robot, "task": self.task, "hash": self.content_hash(),
                "parameters": self.values(), "fit": self.fit}

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "calibration") -> Calibration:
        """Parse and validate the file's content; :class:`CalibrationError` names the bad field."""
        if not isinstance(data, Mapping):
            raise CalibrationError(f"{source}: not a calibration file (expected a mapping at the top, got "
                                   f"{type(data).__name__})")
        if data.get("format") != FORMAT:
            raise CalibrationError(f"{source}: 'format' is {data.get('format')!r}, expected {FORMAT!r}: not a file "
                                   "written by python -m deploy.calibrate, or one of another toolkit version")
        for key in ("robot", "task", "parameters"):
            if key not in data:
                raise CalibrationError(f"{source}: key '{key}' is missing")
        parameters = data["parameters"]
        if not isinstance(parameters, Mapping):
            raise CalibrationError(f"{source}: 'parameters' must be a mapping, got {type(parameters).__name__}")
        expected = (*JOINT_PARAMETERS, *SCALAR_PARAMETERS, "action_latency")
        unknown = sorted(set(parameters) - set(expected))
        missing = [key for key in expected if key not in parameters]
        if unknown or missing:
            raise CalibrationError(f"{source}: 'parameters' must hold exactly {list(expected)}"
                                   + (f"; missing {missing}" if missing else "") + (f"; unknown {unknown}" if unknown
                                                                                    else ""))
        names = None
        arrays = {}
        for key in JOINT_PARAMETERS:
            per_joint = parameters[key]
            if not isinstance(per_joint, Mapping) or not per_joint:
                raise CalibrationError(f"{source}: 'parameters.{key}' must map each joint name to a number, got "
                                       f"{per_joint!r}")
            keys = tuple(str(k) for k in per_joint)
            if names is None:
                names = keys
            elif keys != names:
                raise CalibrationError(f"{source}: 'parameters.{key}' names joints {list(keys)}, "
                                       f"'parameters.{JOINT_PARAMETERS[0]}' {list(names)}: the same joints, in the "
                                       "same order, are needed")
            arrays[key] = [_number(f"{source}: 'parameters.{key}.{k}'", v) for k, v in per_joint.items()]
        fit = data.get("fit", {}) or {}
        try:
            calibration = cls(robot=data["robot"], task=data["task"], joint_names=names, **arrays,
                              **{key: _number(f"{source}: 'parameters.{key}'", parameters[key])
                                 for key in SCALAR_PARAMETERS},
                              action_latency=parameters["action_latency"], fit=fit)
        except CalibrationError as error:
            raise CalibrationError(f"{source}: {error}") from None
        recorded = data.get("hash")
        if recorded is not None and str(recorded) != calibration.content_hash():
            raise CalibrationError(
                f"{source}: its hash {recorded} does not match its values (hash {calibration.content_hash()}): the "
                "values were edited after the fit. Refit, or delete the 'hash' line to accept the edited values")
        return calibration

    def save(self, path: str | os.PathLike) -> Path:
        """Write the YAML file atomically (a crash never leaves half a file)."""
        import yaml

        path = Path(path)
        text = "# Sim-to-real calibration written by python -m deploy.calibrate (toolkit/contract/calibration.py)\n"
        text += yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=120)
        directory = path.parent if str(path.parent) else Path(".")
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def load_calibration(path: str | os.PathLike) -> Calibration:
    """Read and validate a calibration file; :class:`CalibrationError` names the problem."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"calibration file {path} does not exist (write one with python -m deploy.calibrate)")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise CalibrationError(f"{path} is not valid YAML: {error}") from None
    return Calibration.from_dict(data, source=str(path))


# --- validation helpers ----------------------------------------------------------------------
def _number(what: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CalibrationError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _positive(key: str, value) -> float:
    value = _number(f"calibration '{key}'", value)
    if value <= 0:
        raise CalibrationError(f"calibration '{key}' must be a positive scale, got {value!r}")
    return value


def _joint_values(key: str, value, n: int, positive: bool) -> np.ndarray:
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise CalibrationError(f"calibration '{key}' must be {n} numbers (one per joint): {error}") from None
    if array.shape != (n,) or not np.isfinite(array).all():
        raise CalibrationError(f"calibration '{key}' must hold {n} finite numbers (one per joint), got "
                               f"{np.asarray(value).tolist()!r}")
    if positive and np.any(array <= 0):
        raise CalibrationError(f"calibration '{key}' must be positive scales, got {array.tolist()}")
    array.setflags(write=False)
    return array


def _json_default(value):
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} {value!r} is not plain data")


__all__ = ["CALIBRATED_FIELDS", "Calibration", "CalibrationError", "CalibrationTargets", "FORMAT", "LatencyLine",
           "apply_scales", "calibration_targets", "delayed_commands", "load_calibration", "nominal_values",
           "physical_angle", "physical_target", "reported_angle", "servo_command"]
