"""What an exported policy says about itself: :class:`PolicyMetadata`, its one encoding into
string key/values (ONNX ``metadata_props``) and back, and :func:`mismatches` against a robot
and a task.

Built from the contract itself: the robot part *is* a :class:`~toolkit.contract.robot.RobotSpec`
and the observation part an :class:`~toolkit.contract.obs_layout.ObsLayout`, so there is no
second description to drift. Keys (every value a string, JSON where structured):

============================  ==============================================================
key                           value
============================  ==============================================================
format                        ``METADATA_FORMAT`` (bumped on incompatible changes)
robot                         robot id ("dclaw")
joint_names                   JSON list, actuator order (the action's order)
joint_low, joint_high         JSON lists (rad)
default_pose                  JSON list (rad), the joint targets at reset
action_scale                  JSON list (rad per unit action per control step)
control_dt                    JSON number (s)
max_joint_speed               JSON number (rad/s), the deployment safety clamp's speed bound
task                          registered task name ("dclaw-turn")
task_overrides                JSON object of the task's settings changed for training
obs_layout                    JSON ``[[name, size], ...]`` in observation order
schema_hash                   ``ObsLayout.schema_hash()`` of obs_layout
calibration                   JSON object: the calibration the policy was trained around
                              (``{}`` for none; else its hash, file and fitted values)
toolkit_version, run_name     strings
training_step                 JSON integer: environment steps of the checkpoint
============================  ==============================================================

Writers may add keys; readers ignore keys they do not know.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from toolkit.contract.obs_layout import ObsLayout
from toolkit.contract.robot import JOINT_ARRAYS, RobotSpec

METADATA_FORMAT = "sim2real-pql-onnx-policy/2"

_ROBOT_KEYS = ("joint_names", *JOINT_ARRAYS, "control_dt", "max_joint_speed")
_STRING_KEYS = ("task", "schema_hash", "toolkit_version", "run_name")
_JSON_KEYS = ("task_overrides", "calibration", "training_step")


class PolicyError(RuntimeError):
    """A policy file that cannot be used, or an observation the policy cannot be applied to."""


@dataclass(frozen=True, eq=False)
class PolicyMetadata:
    """An exported policy's description (see the module docstring for the file keys).

    Construction validates every field and raises :class:`PolicyError` naming it;
    ``task_overrides`` and ``calibration`` are stored as their JSON round trip (tuples become
    lists), as a reader of the file sees them.
    """

    robot: RobotSpec
    task: str
    obs_layout: ObsLayout
    schema_hash: str
    toolkit_version: str
    run_name: str
    training_step: int
    task_overrides: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.robot, RobotSpec):
            raise PolicyError(f"metadata 'robot' must be a RobotSpec, got {type(self.robot).__name__}")
        for key in _STRING_KEYS:
            if not isinstance(getattr(self, key), str):
                raise PolicyError(f"metadata '{key}' must be a string, got {getattr(self, key)!r}")
        if not self.task:
            raise PolicyError("metadata 'task' is empty")
        for key in ("task_overrides", "calibration"):
            value = getattr(self, key)
            if not isinstance(value, dict):
                raise PolicyError(f"metadata '{key}' must be a JSON object, got {value!r}")
            try:
                value = json.loads(json.dumps(value, sort_keys=True, default=_json_default))
            except (TypeError, ValueError) as error:
                raise PolicyError(f"metadata '{key}' is not JSON-serialisable: {error}") from error
            object.__setattr__(self, key, value)
        if isinstance(self.training_step, bool) or not isinstance(self.training_step, int) or self.training_step < 0:
            raise PolicyError(f"metadata 'training_step' must be an integer >= 0, got {self.training_step!r}")
        if not isinstance(self.obs_layout, ObsLayout):
            raise PolicyError(f"metadata 'obs_layout' must be an ObsLayout, got {type(self.obs_layout).__name__}")
        if self.schema_hash != self.obs_layout.schema_hash():
            raise PolicyError(f"metadata 'schema_hash' {self.schema_hash!r} does not match the observation layout "
                              f"(its hash is {self.obs_layout.schema_hash()!r}): the file was altered")

    @classmethod
    def for_task(cls, task, *, run_name: str, training_step: int, toolkit_version: str,
                 task_overrides: Mapping | None = None, calibration: Mapping | None = None) -> PolicyMetadata:
        """The metadata of a policy trained on ``task`` (a :class:`~toolkit.contract.task.Task`)."""
        return cls(robot=task.robot, task=task.name, obs_layout=task.obs_layout,
                   schema_hash=task.obs_layout.schema_hash(), toolkit_version=toolkit_version, run_name=run_name,
                   training_step=training_step, task_overrides=dict(task_overrides or {}),
                   calibration=dict(calibration or {}))

    @property
    def obs_size(self) -> int:
        """Length of the observation vector the policy takes."""
        return self.obs_layout.size

    @property
    def action_size(self) -> int:
        """Length of the action vector the policy returns (one per joint)."""
        return self.robot.num_joints

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PolicyMetadata):
            return NotImplemented
        return encode_metadata(self) == encode_metadata(other)

    def summary(self) -> str:
        """One line for logs: robot, task, run, step, sizes, layout and hash."""
        layout = ", ".join(f"{name}:{size}" for name, size in self.obs_layout.fields)
        overrides = f" {json.dumps(self.task_overrides, sort_keys=True)}" if self.task_overrides else ""
        calibrated = f" calibration={self.calibration.get('hash', '?')}" if self.calibration else ""
        return (f"robot={self.robot.name} task={self.task}{overrides}{calibrated} run={self.run_name or '-'} "
                f"step={self.training_step} joints={self.action_size} control_dt={self.robot.control_dt:g}s "
                f"obs={self.obs_size} [{layout}] schema={self.schema_hash} toolkit={self.toolkit_version}")


def encode_metadata(metadata: PolicyMetadata) -> dict[str, str]:
    """The key -> string form of ``metadata`` (the inverse of :func:`decode_metadata`)."""
    robot = metadata.robot
    out = {"format": METADATA_FORMAT, "robot": robot.name}
    for key in _ROBOT_KEYS:
        value = getattr(robot, key)
        out[key] = json.dumps(value.tolist() if isinstance(value, np.ndarray) else
                              list(value) if isinstance(value, tuple) else value)
    out["obs_layout"] = metadata.obs_layout.to_json()
    for key in _STRING_KEYS:
        out[key] = getattr(metadata, key)
    for key in _JSON_KEYS:
        out[key] = json.dumps(getattr(metadata, key), sort_keys=True)
    return out


def decode_metadata(props: Mapping[str, str]) -> PolicyMetadata:
    """Parse and validate key -> string metadata; :class:`PolicyError` names the bad key."""
    if "format" not in props:
        raise PolicyError("metadata key 'format' is missing: not a policy written by export.onnx")
    if props["format"] != METADATA_FORMAT:
        raise PolicyError(f"metadata 'format' is {props['format']!r}; this reader understands {METADATA_FORMAT!r}"
                          " (export the policy again with this toolkit)")
    expected = ("robot", *_ROBOT_KEYS, "obs_layout", *_STRING_KEYS, *_JSON_KEYS)
    for key in expected:
        if key not in props:
            raise PolicyError(f"metadata key '{key}' is missing")

    def parse(key: str):
        try:
            return ObsLayout.from_json(props[key]) if key == "obs_layout" else json.loads(props[key])
        except (TypeError, ValueError) as error:
            raise PolicyError(f"metadata '{key}' cannot be parsed ({error}): {props[key][:200]!r}") from error

    try:
        robot = RobotSpec(name=props["robot"], **{key: parse(key) for key in _ROBOT_KEYS})
    except ValueError as error:
        raise PolicyError(f"metadata {error}") from None
    return PolicyMetadata(robot=robot, obs_layout=parse("obs_layout"), **{key: props[key] for key in _STRING_KEYS},
                          **{key: parse(key) for key in _JSON_KEYS})


def decode_entries(entries, source: str) -> PolicyMetadata:
    """Decode key/value entries (an ONNX model's ``metadata_props``: objects with ``key`` and
    ``value``); a key that appears twice means the file was altered. Errors name ``source``."""
    props: dict[str, str] = {}
    for entry in entries:
        if entry.key in props:
            raise PolicyError(f"{source}: metadata key '{entry.key}' appears twice: the file was altered")
        props[entry.key] = entry.value
    try:
        return decode_metadata(props)
    except PolicyError as error:
        raise PolicyError(f"{source}: {error}") from None


def mismatches(metadata: PolicyMetadata, robot: RobotSpec, task) -> list[str]:
    """Every way in which a policy cannot drive ``robot`` on ``task``, one line each (empty: it can).

    Compared: the robot (name, joints and their order, limits, default pose, action scale,
    control period, speed bound) and the task (name, observation layout with its sizes and schema
    hash, action size).
    """
    problems = [line for line in metadata.robot.differences(robot, "policy", "robot") if not line.startswith("robot:")]
    if metadata.robot.name != robot.name:
        problems.insert(0, f"robot: the policy was trained for '{metadata.robot.name}', the backend drives "
                           f"'{robot.name}'")
    if metadata.task != task.name:
        problems.append(f"task: the policy was trained on '{metadata.task}', the runner has '{task.name}'")
    layout = task.obs_layout
    if tuple(metadata.obs_layout.fields) != tuple(layout.fields):
        problems.append(f"observation layout: policy {list(metadata.obs_layout.fields)} vs task "
                        f"'{task.name}' {list(layout.fields)}")
    if metadata.schema_hash != layout.schema_hash():
        problems.append(f"observation schema hash: policy {metadata.schema_hash} vs task {layout.schema_hash()}")
    if metadata.obs_size != layout.size:
        problems.append(f"observation size: policy {metadata.obs_size} vs task {layout.size}")
    if metadata.action_size != robot.num_joints:
        problems.append(f"action size: policy {metadata.action_size} vs robot {robot.num_joints} joints")
    return problems


def metadata_fields() -> tuple[str, ...]:
    """Every key an encoded metadata holds (``format`` first)."""
    return ("format", "robot", *_ROBOT_KEYS, "obs_layout", *_STRING_KEYS, *_JSON_KEYS)


def _json_default(value):
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON-serialisable")


__all__ = ["METADATA_FORMAT", "PolicyError", "PolicyMetadata", "decode_entries", "decode_metadata", "encode_metadata",
           "metadata_fields", "mismatches"]
