"""Domain randomization: one table per robot, one sampler for training and deployment.

:class:`DRTable` is pure data (robots define theirs without importing torch or mujoco).
:class:`DomainRandomizer` draws a table's values per env at reset and applies them, and applies
the per-step perturbations (action noise and latency, observation noise, pushes). It is written
against the array API and :class:`~toolkit.contract.model_fields.ModelFields`, so the training
VecEnv (torch tensors of a batched sim) and the deployment sim (numpy views of one ``MjModel``)
run the very same code, drawing from the same per-env streams (:mod:`toolkit.contract.rng`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from array_api_compat import array_namespace

from toolkit.contract.model_fields import ModelFields

if TYPE_CHECKING:
    import mujoco

Array = Any


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


#: Model fields the physical part of a table writes (object scale adds geom sizes and offsets).
_PHYSICAL_FIELDS = ("dof_damping", "actuator_gainprm", "actuator_biasprm", "geom_friction", "body_mass",
                    "body_inertia", "opt.gravity")
_OBJECT_SCALE_FIELDS = ("geom_size", "geom_pos", "geom_rbound", "geom_aabb")


class DomainRandomizer:
    """Samples and applies a :class:`DRTable` to ``num_envs`` simulated robots.

    Args:
        table: the robot's ranges.
        fields: the per-env model fields of the simulator (the VecEnv's batched sim, or
            :class:`~toolkit.contract.model_fields.SingleModelFields` of the deployment sim). Their
            values at construction are the nominal model every draw scales from.
        model: the compiled model (names of the object's bodies and geoms, colliding geoms, masses).
        robot_dofs: dof indices of the robot's joints (damping), (D,).
        robot_actuators: actuator indices of the robot (kp), (J,).
        base_latency: control steps of action latency every env has before the table's random
            0..max_action_latency is added (a calibration's fitted latency).

    ``values`` maps each randomized quantity to a (num_envs, k) float64 array of the values in
    force (scales relative to the nominal model, gravity in m/s^2, latency in steps):
    joint_damping (N, D), actuator_gain (N, J), friction (N, 1), mass (N, bodies with mass),
    object_scale (N, 1), gravity (N, 3), action_latency (N, 1).

    ``rand`` arguments follow the task protocol: ``rand((k, ...))`` gives one row per env of the
    call (the envs ``ids`` in :meth:`sample` and :meth:`reset_actions`, all envs elsewhere).
    """

    def __init__(self, table: DRTable, fields: ModelFields, model: mujoco.MjModel, robot_dofs, robot_actuators,
                 base_latency: int = 0) -> None:
        import mujoco

        if base_latency < 0:
            raise ValueError(f"base_latency must be >= 0 control steps, got {base_latency}")
        self.table, self.fields = table, fields
        n = fields.num_envs
        self.num_envs = n
        self._fields = {name: fields.model_field(name) for name in _PHYSICAL_FIELDS}
        first = self._fields["dof_damping"]
        self.xp = xp = array_namespace(first)
        self.device = getattr(first, "device", None)

        def index(values) -> Array:
            return xp.asarray(np.asarray(values, dtype=np.int64), device=self.device)

        self._robot_dofs = index(robot_dofs)
        self._actuators = index(robot_actuators)
        self._friction_geoms = index(np.flatnonzero((model.geom_contype != 0) | (model.geom_conaffinity != 0)))
        self._mass_bodies = index(np.flatnonzero(model.body_mass > 0))
        self._object_geoms = index([_name_id(model, mujoco.mjtObj.mjOBJ_GEOM, g) for g in table.object_geoms])
        bodies = [_name_id(model, mujoco.mjtObj.mjOBJ_BODY, b) for b in table.object_bodies]
        self._push_body = bodies[0] if bodies else None
        if len(table.object_geoms):
            self._fields.update({name: fields.model_field(name) for name in _OBJECT_SCALE_FIELDS})
        # float64 copies: a sim's fields may be float32 (mujoco_warp); values are computed in float64.
        self._nominal = {name: xp.astype(field[0], xp.float64, copy=True) for name, field in self._fields.items()}

        def ones(k: int) -> Array:
            return xp.ones((n, k), dtype=xp.float64, device=self.device)

        self.base_latency = int(base_latency)
        self.values: dict[str, Array] = {
            "joint_damping": ones(int(self._robot_dofs.shape[0])),
            "actuator_gain": ones(int(self._actuators.shape[0])),
            "friction": ones(1),
            "mass": ones(int(self._mass_bodies.shape[0])),
            "object_scale": ones(1),
            "gravity": xp.broadcast_to(self._nominal["opt.gravity"], (n, 3)) + 0.0,
            "action_latency": ones(1) * float(self.base_latency),
        }
        # The last max-latency + 1 actions per env (a ring): what a late env applies instead.
        self._delay = self.base_latency + table.max_action_latency + 1
        self._ring = xp.zeros((n, self._delay, int(self._actuators.shape[0])), dtype=xp.float64,
                              device=self.device)
        self._cursor = 0
        self._rows = xp.arange(n, device=self.device)

    # --- per reset ----------------------------------------------------------------------
    def sample(self, ids: Array, rand) -> None:
        """Draw new values for envs ``ids`` and write them into the simulator."""
        xp, t, v = self.xp, self.table, self.values
        k = int(ids.shape[0])

        def uniform(lo_hi, shape):
            lo, hi = lo_hi
            return lo + (hi - lo) * rand(shape)

        log_lo, log_hi = math.log(t.joint_damping[0]), math.log(t.joint_damping[1])
        v["joint_damping"][ids] = xp.exp(uniform((log_lo, log_hi), (k, int(self._robot_dofs.shape[0]))))
        v["actuator_gain"][ids] = uniform(t.actuator_gain, (k, int(self._actuators.shape[0])))
        v["friction"][ids] = uniform(t.friction, (k, 1))
        v["mass"][ids] = uniform(t.mass, (k, int(self._mass_bodies.shape[0])))
        v["object_scale"][ids] = uniform(t.object_scale, (k, 1))
        v["gravity"][ids] = self._nominal["opt.gravity"] + t.gravity_std * standard_normal(rand, (k, 3))
        latency = xp.clip(xp.floor(rand((k, 1)) * (t.max_action_latency + 1)), 0, t.max_action_latency)
        v["action_latency"][ids] = latency + self.base_latency
        self._apply(ids)
        self.reset_actions(ids)

    def _apply(self, ids: Array) -> None:
        nom, v, xp = self._nominal, self.values, self.xp
        rows = ids[:, None]

        def put(name, index, value):  # the field's own dtype (float32 on mujoco_warp)
            field = self._fields[name]
            field[index] = xp.astype(value, field.dtype)

        dofs, actuators = self._robot_dofs, self._actuators
        put("dof_damping", (rows, dofs), nom["dof_damping"][dofs] * v["joint_damping"][ids])
        kp = nom["actuator_gainprm"][actuators, 0] * v["actuator_gain"][ids]
        put("actuator_gainprm", (rows, actuators, 0), kp)
        # Position actuators: bias = -kp * q (biasprm[1]); keep the pair consistent.
        put("actuator_biasprm", (rows, actuators, 1), -kp)
        geoms = self._friction_geoms
        put("geom_friction", (rows, geoms, 0), nom["geom_friction"][geoms, 0] * v["friction"][ids])
        bodies = self._mass_bodies
        put("body_mass", (rows, bodies), nom["body_mass"][bodies] * v["mass"][ids])
        put("body_inertia", (rows, bodies), nom["body_inertia"][bodies] * v["mass"][ids][..., None])
        if self._object_geoms.shape[0]:
            scale = v["object_scale"][ids]
            for name in _OBJECT_SCALE_FIELDS:
                nominal = nom[name][self._object_geoms]
                put(name, (rows, self._object_geoms), nominal * (scale if nominal.ndim == 1 else scale[..., None]))
        put("opt.gravity", ids, v["gravity"][ids])
        self.fields.model_changed(ids)

    def set_values(self, ids: Array, values: dict[str, Array]) -> None:
        """Put envs ``ids`` in the state of given values (e.g. logged draws, each (len(ids), k)
        or (k,) for one env): what a replay of a randomized episode needs."""
        for name, current in self.values.items():
            if name not in values:
                raise ValueError(f"DR value '{name}' is missing (have {sorted(values)})")
            value = self.xp.reshape(self.xp.asarray(values[name], dtype=self.xp.float64, device=self.device),
                                    (int(ids.shape[0]), int(current.shape[1])))
            current[ids] = value
        self._apply(ids)
        self.reset_actions(ids)

    def reset_actions(self, ids: Array) -> None:
        """Forget the delayed actions of envs ``ids`` (a late env applies zero actions first)."""
        self._ring[ids] = 0.0

    # --- per step -----------------------------------------------------------------------
    def perturb_action(self, action: Array, rand) -> Array:
        """The action each env's robot applies this step, (N, J): the policy's ``action``
        (clipped to [-1, 1]) plus Gaussian noise, delayed by the env's latency in control steps."""
        noisy = action + self.table.action_noise_std * standard_normal(rand, action.shape)
        self._cursor = (self._cursor + 1) % self._delay
        self._ring[:, self._cursor] = noisy
        latency = self.xp.astype(self.values["action_latency"][:, 0], self.xp.int64)
        return self._ring[self._rows, (self._cursor - latency) % self._delay]

    def noisy_readings(self, readings: dict[str, Array], stds, rand) -> dict[str, Array]:
        """``readings`` with Gaussian observation noise (std ``stds[name] * table.obs_noise``) on
        the named readings (the task's ``noisy_readings``), drawn in ``stds`` order."""
        out = dict(readings)
        for name, std in stds.items():
            value = readings[name]
            out[name] = value + std * self.table.obs_noise * standard_normal(rand, value.shape)
        return out

    def push(self, xfrc_applied: Array, rand) -> None:
        """With ``push_probability`` per env, a random wrench on the object for the coming step
        (``xfrc_applied``: the sim's (N, nbody, 6) applied forces)."""
        t = self.table
        if self._push_body is None or t.push_probability <= 0:
            return
        xp, n = self.xp, self.num_envs
        active = xp.astype(rand((n, 1)) < t.push_probability, xfrc_applied.dtype)
        direction = standard_normal(rand, (n, 6))
        scale = xp.asarray([t.push_force] * 3 + [t.push_torque] * 3, dtype=direction.dtype, device=self.device)
        xfrc_applied[:, self._push_body] = xp.astype(direction * scale, xfrc_applied.dtype) * active

    def flat_values(self) -> dict[str, Array]:
        """Values per env as (num_envs, k) arrays, for logging."""
        return {name: self.xp.reshape(value, (value.shape[0], -1)) for name, value in self.values.items()}


def standard_normal(rand, shape):
    """Box-Muller standard normals from the uniform source (keeps one seeded stream per env)."""
    u1 = rand(shape)
    xp = array_namespace(u1)
    u1 = xp.clip(u1, 1e-12, None)
    u2 = rand(shape)
    return xp.sqrt(-2.0 * xp.log(u1)) * xp.cos(2.0 * math.pi * u2)


def _name_id(model: mujoco.MjModel, obj, name: str) -> int:
    import mujoco

    index = mujoco.mj_name2id(model, obj, name)
    if index < 0:
        raise ValueError(f"domain randomization names {obj.name[6:].lower()} '{name}', which the model lacks")
    return index
