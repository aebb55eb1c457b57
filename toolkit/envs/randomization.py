"""Domain randomization: one table per robot, per-env values sampled at reset.

Physical parameters are written as per-env model fields through the backend
(``BatchedSim.model_field``: ``mujoco.batch.Batch.expand`` on the C engine); perturbations
(observation/action noise, action latency, pushes) are applied by the VecEnv each step.
The sampled values stay readable in :attr:`DomainRandomizer.values` for logging.
"""

from __future__ import annotations

import math

import mujoco
import torch

from toolkit.contract.dr import DRTable


class DomainRandomizer:
    """Samples and applies a :class:`DRTable` to a batched simulator.

    ``values`` maps each randomized quantity to a (num_envs, k) float64 tensor of the values
    in force (scales relative to the nominal model, gravity in m/s^2, latency in steps):
    joint_damping (N, robot dofs), actuator_gain (N, J), friction (N, 1), mass (N, bodies
    with mass), object_scale (N, 1), gravity (N, 3), action_latency (N, 1).

    ``rand`` arguments follow the task protocol: ``rand((k, ...))`` gives one row per env of
    the call (the envs ``ids`` in :meth:`sample`, all envs in :meth:`push`).
    """

    def __init__(self, table: DRTable, sim, model: mujoco.MjModel, robot_dofs: torch.Tensor,
                 robot_actuators: torch.Tensor) -> None:
        self.table = table
        self.sim = sim
        n, device = sim.num_envs, sim.device
        self._robot_dofs = robot_dofs.to(device)
        self._actuators = robot_actuators.to(device)
        collide = (model.geom_contype != 0) | (model.geom_conaffinity != 0)
        self._friction_geoms = torch.nonzero(torch.as_tensor(collide)).flatten().to(device)
        object_bodies = [_id(model, mujoco.mjtObj.mjOBJ_BODY, name) for name in table.object_bodies]
        self._mass_bodies = torch.nonzero(torch.as_tensor(model.body_mass, device=device) > 0).flatten()
        self._object_geoms = torch.tensor([_id(model, mujoco.mjtObj.mjOBJ_GEOM, g) for g in table.object_geoms],
                                          dtype=torch.long, device=device)
        self._push_body = object_bodies[0] if object_bodies else None

        # Live per-env model fields, and their nominal values to scale from.
        names = ["dof_damping", "actuator_gainprm", "actuator_biasprm", "geom_friction", "body_mass",
                 "body_inertia", "opt.gravity"]
        if len(self._object_geoms):
            names += ["geom_size", "geom_pos", "geom_rbound", "geom_aabb"]
        self._fields = {name: sim.model_field(name) for name in names}
        # float64 copies: the sim's fields may be float32 (mujoco_warp); values are computed in float64.
        self._nominal = {name: field[0].to(torch.float64, copy=True) for name, field in self._fields.items()}

        f64 = dict(dtype=torch.float64, device=device)
        self.values: dict[str, torch.Tensor] = {
            "joint_damping": torch.ones(n, len(self._robot_dofs), **f64),
            "actuator_gain": torch.ones(n, len(self._actuators), **f64),
            "friction": torch.ones(n, 1, **f64),
            "mass": torch.ones(n, len(self._mass_bodies), **f64),
            "object_scale": torch.ones(n, 1, **f64),
            "gravity": self._nominal["opt.gravity"].expand(n, 3).clone(),
            "action_latency": torch.zeros(n, 1, **f64),
        }

    def sample(self, ids: torch.Tensor, rand) -> None:
        """Draw new values for envs ``ids`` and write them into the simulator."""
        t, k = self.table, len(ids)
        v = self.values

        def uniform(lo_hi, shape):
            lo, hi = lo_hi
            return lo + (hi - lo) * rand(shape)

        log_lo, log_hi = math.log(t.joint_damping[0]), math.log(t.joint_damping[1])
        v["joint_damping"][ids] = torch.exp(uniform((log_lo, log_hi), (k, len(self._robot_dofs))))
        v["actuator_gain"][ids] = uniform(t.actuator_gain, (k, len(self._actuators)))
        v["friction"][ids] = uniform(t.friction, (k, 1))
        v["mass"][ids] = uniform(t.mass, (k, len(self._mass_bodies)))
        v["object_scale"][ids] = uniform(t.object_scale, (k, 1))
        gaussian = standard_normal(rand, (k, 3))
        v["gravity"][ids] = self._nominal["opt.gravity"] + t.gravity_std * gaussian
        latency = torch.floor(rand((k, 1)) * (t.max_action_latency + 1))
        v["action_latency"][ids] = latency.clamp(max=t.max_action_latency)
        self._apply(ids)

    def _apply(self, ids: torch.Tensor) -> None:
        nom, v = self._nominal, self.values
        rows = ids[:, None]

        def put(name, index, value):  # torch's index_put needs the field's dtype (float32 on mujoco_warp)
            self._fields[name][index] = value.to(self._fields[name].dtype)

        put("dof_damping", (rows, self._robot_dofs), nom["dof_damping"][self._robot_dofs] * v["joint_damping"][ids])
        kp = nom["actuator_gainprm"][self._actuators, 0] * v["actuator_gain"][ids]
        put("actuator_gainprm", (rows, self._actuators, 0), kp)
        # Position actuators: bias = -kp * q (biasprm[1]); keep the pair consistent.
        put("actuator_biasprm", (rows, self._actuators, 1), -kp)
        friction = nom["geom_friction"][self._friction_geoms, 0] * v["friction"][ids]
        put("geom_friction", (rows, self._friction_geoms, 0), friction)
        put("body_mass", (rows, self._mass_bodies), nom["body_mass"][self._mass_bodies] * v["mass"][ids])
        put("body_inertia", (rows, self._mass_bodies),
            nom["body_inertia"][self._mass_bodies] * v["mass"][ids][..., None])
        if len(self._object_geoms):
            scale = v["object_scale"][ids]
            for name in ("geom_size", "geom_pos", "geom_rbound", "geom_aabb"):
                nominal = nom[name][self._object_geoms]
                s = scale if nominal.ndim == 1 else scale[..., None]
                put(name, (rows, self._object_geoms), nominal * s)
        put("opt.gravity", ids, v["gravity"][ids])
        self.sim.model_changed(ids)

    def push(self, rand) -> None:
        """With ``push_probability`` per env, apply a random wrench to the object for one step."""
        if self._push_body is None or self.table.push_probability <= 0:
            return
        n = self.sim.num_envs
        active = (rand((n, 1)) < self.table.push_probability).to(self.sim.xfrc_applied.dtype)
        direction = standard_normal(rand, (n, 6))
        scale = torch.tensor([self.table.push_force] * 3 + [self.table.push_torque] * 3,
                             dtype=direction.dtype, device=direction.device)
        self.sim.xfrc_applied[:, self._push_body] = active * direction * scale

    def flat_values(self) -> dict[str, torch.Tensor]:
        """Values per env as (num_envs, k) tensors, for logging."""
        return {name: value.reshape(value.shape[0], -1) for name, value in self.values.items()}


def standard_normal(rand, shape):
    """Box-Muller standard normals from the uniform source (keeps one seeded stream)."""
    u1 = rand(shape).clamp_min(1e-12)
    u2 = rand(shape)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


def _id(model: mujoco.MjModel, obj: mujoco.mjtObj, name: str) -> int:
    index = mujoco.mj_name2id(model, obj, name)
    if index < 0:
        raise ValueError(f"domain randomization names {obj.name[6:].lower()} '{name}', which the model lacks")
    return index
