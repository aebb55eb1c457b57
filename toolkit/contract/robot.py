"""Robot description shared by training, export and deployment, the action mapping and the
safety clamp.

Written against the array API (numpy and torch both) so that the training env and the
deployment runner map relative actions to joint targets with the very same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from array_api_compat import array_namespace

#: The per-joint array fields of a RobotSpec, in the order they are described and encoded.
JOINT_ARRAYS = ("joint_low", "joint_high", "default_pose", "action_scale")


@dataclass(frozen=True, eq=False)
class RobotSpec:
    """Static facts about a robot's actuated joints (all arrays in actuator order).

    Attributes:
        name: robot id written into ONNX metadata and checked at deployment ("dclaw").
        joint_names: actuated joint names, in actuator order.
        joint_low, joint_high: joint target limits in rad, shape (num_joints,).
        default_pose: joint targets at reset, shape (num_joints,).
        action_scale: rad of target change per unit action per control step, (num_joints,).
        control_dt: seconds per control step.
        max_joint_speed: rad/s a deployed command may move a target by (safety clamp).
        hardware: facts only a hardware backend needs (servo IDs, ...); not part of a policy's
            contract and not compared.

    Construction validates everything and raises ValueError naming the field; arrays are stored
    read-only float64. ``differences(other)`` lists how two specs differ (what a policy check needs).
    """

    name: str
    joint_names: tuple[str, ...]
    joint_low: np.ndarray
    joint_high: np.ndarray
    default_pose: np.ndarray
    action_scale: np.ndarray
    control_dt: float
    max_joint_speed: float
    hardware: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"'robot' must be a non-empty string, got {self.name!r}")
        names = self.joint_names
        if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"'joint_names' must be a list of non-empty strings, got {names!r}")
        names = tuple(names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"'joint_names' must be unique and non-empty, got {list(names)}")
        object.__setattr__(self, "joint_names", names)
        for key in JOINT_ARRAYS:
            object.__setattr__(self, key, _joint_array(key, getattr(self, key), len(names)))
        if np.any(self.joint_low >= self.joint_high):
            raise ValueError("'joint_low' must lie below 'joint_high' for every joint")
        if np.any(self.default_pose < self.joint_low) or np.any(self.default_pose > self.joint_high):
            raise ValueError("'default_pose' lies outside the joint limits")
        if np.any(self.action_scale <= 0):
            raise ValueError(f"'action_scale' must be positive, got {self.action_scale.tolist()}")
        for key in ("control_dt", "max_joint_speed"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"'{key}' must be a positive number, got {value!r}")
            object.__setattr__(self, key, float(value))

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    def differences(self, other: RobotSpec, label: str = "policy", other_label: str = "robot") -> list[str]:
        """One line per field in which ``other`` differs (``hardware`` is not compared)."""
        out = []
        if self.name != other.name:
            out.append(f"robot: {label} '{self.name}' vs {other_label} '{other.name}'")
        if self.joint_names != other.joint_names:
            out.append(f"joint names: {label} {list(self.joint_names)} vs {other_label} {list(other.joint_names)}")
        elif self.num_joints == other.num_joints:
            for key in JOINT_ARRAYS:
                ours, theirs = getattr(self, key), getattr(other, key)
                if not np.allclose(ours, theirs, atol=1e-6, rtol=0):
                    out.append(f"{key}: {label} {np.round(ours, 4).tolist()} vs {other_label} "
                               f"{np.round(theirs, 4).tolist()}")
        for key in ("control_dt", "max_joint_speed"):
            if not math.isclose(getattr(self, key), getattr(other, key), rel_tol=1e-6):
                out.append(f"{key}: {label} {getattr(self, key):g} vs {other_label} {getattr(other, key):g}")
        return out


def relative_joint_target(previous_target, action, action_scale, joint_low, joint_high):
    """target_t = clip(target_{t-1} + action_scale * clip(action, -1, 1), low, high).

    Shapes: previous_target and action (n, num_joints); the rest broadcast against them.
    Works for numpy arrays and torch tensors alike.
    """
    xp = array_namespace(previous_target, action)
    action = xp.clip(action, -1.0, 1.0)
    return xp.clip(previous_target + action_scale * action, joint_low, joint_high)


def clamp_joint_command(command, previous_command, joint_low, joint_high, max_step):
    """The deployment safety clamp: at most ``max_step`` rad from the previous command, then the
    joint limits, which have the last word: the result always lies within [low, high], and
    within ``max_step`` of ``previous_command`` whenever that lies within the limits (a previous
    command outside them is brought back inside at once, never kept outside)."""
    xp = array_namespace(command, previous_command)
    command = xp.clip(command, previous_command - max_step, previous_command + max_step)
    return xp.clip(command, joint_low, joint_high)


def _joint_array(key: str, value, n: int) -> np.ndarray:
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"'{key}' must be a list of numbers: {error}") from error
    if array.shape != (n,) or not np.isfinite(array).all():
        raise ValueError(f"'{key}' must hold {n} finite numbers (one per joint), got {np.asarray(value).tolist()!r}")
    array.setflags(write=False)
    return array
