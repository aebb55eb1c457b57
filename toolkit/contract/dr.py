"""The domain-randomization table (pure data: robots define theirs without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DRTable:
    """Ranges of one robot's randomization (scales multiply the model's nominal values).

    Attributes:
        joint_damping: log-uniform scale of the robot's joint damping.
        actuator_gain: uniform scale of the position actuators' stiffness kp.
        friction: uniform scale of the sliding friction of every colliding geom.
        mass: uniform scale of link and object masses (and inertias).
        object_scale: uniform scale of the object's geom sizes and offsets.
        gravity_std: std (m/s^2) of a per-env offset added to each gravity component.
        obs_noise: multiplier of the task's per-reading observation-noise stds.
        action_noise_std: std of Gaussian noise added to actions (before clipping).
        max_action_latency: actions reach the robot 0..max control steps late (per env).
        push_probability: chance per control step that the object gets a push.
        push_force: magnitude (N) of a push's force; push_torque likewise (N m).
        object_bodies: names of the object's bodies (the first one receives the pushes).
        object_geoms: names of the object's geoms (object scale).
    """

    joint_damping: tuple[float, float] = (0.3, 3.0)
    actuator_gain: tuple[float, float] = (0.75, 1.5)
    friction: tuple[float, float] = (0.7, 1.3)
    mass: tuple[float, float] = (0.5, 1.5)
    object_scale: tuple[float, float] = (0.95, 1.05)
    gravity_std: float = 0.4
    obs_noise: float = 1.0
    action_noise_std: float = 0.05
    max_action_latency: int = 1
    push_probability: float = 0.02
    push_force: float = 0.5
    push_torque: float = 0.01
    object_bodies: tuple[str, ...] = ()
    object_geoms: tuple[str, ...] = ()
