"""Robot description shared by training, export and deployment, and the action mapping.

Written against the array API (numpy and torch both) so that the training env and the
deployment runner map relative actions to joint targets with the very same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from array_api_compat import array_namespace


@dataclass(frozen=True)
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
    """

    name: str
    joint_names: tuple[str, ...]
    joint_low: np.ndarray
    joint_high: np.ndarray
    default_pose: np.ndarray
    action_scale: np.ndarray
    control_dt: float
    max_joint_speed: float
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.joint_names)
        for key in ("joint_low", "joint_high", "default_pose", "action_scale"):
            value = np.asarray(getattr(self, key), dtype=np.float64)
            if value.shape != (n,):
                raise ValueError(f"RobotSpec {self.name}: {key} has shape {value.shape}, expected ({n},)")
            object.__setattr__(self, key, value)
        if np.any(self.joint_low >= self.joint_high):
            raise ValueError(f"RobotSpec {self.name}: joint_low must be below joint_high")
        if np.any(self.default_pose < self.joint_low) or np.any(self.default_pose > self.joint_high):
            raise ValueError(f"RobotSpec {self.name}: default_pose lies outside the joint limits")

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)


def relative_joint_target(previous_target, action, action_scale, joint_low, joint_high):
    """target_t = clip(target_{t-1} + action_scale * clip(action, -1, 1), low, high).

    Shapes: previous_target and action (n, num_joints); the rest broadcast against them.
    Works for numpy arrays and torch tensors alike.
    """
    xp = array_namespace(previous_target, action)
    action = xp.clip(action, -1.0, 1.0)
    return xp.clip(previous_target + action_scale * action, joint_low, joint_high)


def clamp_joint_command(command, previous_command, joint_low, joint_high, max_step):
    """Safety clamp used at deployment: limits first, then at most max_step rad per step."""
    xp = array_namespace(command, previous_command)
    command = xp.clip(command, joint_low, joint_high)
    return xp.clip(command, previous_command - max_step, previous_command + max_step)
