"""Evaluation-sim backend: the task's own MuJoCo scene on one ``mujoco.MjData``.

The task's :meth:`~toolkit.contract.task.Task.read`/:meth:`~toolkit.contract.task.Task.write_reset` are
written for batched state arrays ``(n, ...)``; :class:`DataView` presents a single ``MjData`` as a
batch of one (``data.qpos[None]`` and friends are writable views), so the very functions the
trainer uses reset and read the deployment sim.

The simulated clock is driven by the control loop: :meth:`SimBackend.write` applies the command
and advances the physics by one control period (``substeps`` model timesteps). Optional domain
randomization draws the task's :class:`~toolkit.contract.dr.DRTable` physical ranges per
episode and applies them to the ``MjModel`` with numpy (:class:`SimRandomizer`); the values drawn
are logged and :mod:`deploy.replay` re-applies them.
"""

from __future__ import annotations

import math

import mujoco
import numpy as np

from deploy.backends.base import Backend, Field, ResetResult
from toolkit.contract.dr import DRTable
from toolkit.contract.task import Task

#: Everything mj_step needs to continue bit-identically (qpos, qvel, act, time, warmstart, ctrl,
#: applied forces, mocap, ...): what replay restores.
STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION


class DataView:
    """A single ``MjData`` seen as a batch of one env: ``view.qpos`` is ``data.qpos[None]``.

    Only attribute access is forwarded; every array is a writable view of the live data, so a
    task's ``write_reset`` writes straight into the simulator.
    """

    _FIELDS = ("qpos", "qvel", "ctrl", "act", "mocap_pos", "mocap_quat", "xfrc_applied", "qfrc_applied")

    def __init__(self, data: mujoco.MjData) -> None:
        self.data = data

    def __getattr__(self, name: str):
        if name in DataView._FIELDS:
            return getattr(self.data, name)[None]
        raise AttributeError(f"DataView has no field '{name}'")

    def data_field(self, name: str) -> np.ndarray:
        """Any MjData array as (1, ...) (the BatchedSim accessor tasks may use)."""
        return getattr(self.data, name)[None]


def integration_state(model: mujoco.MjModel, data: mujoco.MjData) -> np.ndarray:
    """The full integration state of ``data`` (see :data:`STATE_SPEC`) as a flat array."""
    state = np.empty(mujoco.mj_stateSize(model, STATE_SPEC))
    mujoco.mj_getState(model, data, state, STATE_SPEC)
    return state


def settle_derived(model: mujoco.MjModel, data: mujoco.MjData) -> None:
    """Recompute kinematics and velocities for the current qpos/qvel (what the batched sim's
    ``stage=mjSTAGE_VEL`` does after a step), so readings of sites/bodies are current. Does not
    touch the integration state: the trajectory is unaffected."""
    mujoco.mj_fwdPosition(model, data)
    mujoco.mj_fwdVelocity(model, data)


def substeps_for(control_dt: float, timestep: float) -> tuple[int, float]:
    """Physics substeps per control period and the timestep that makes them exact.

    ``substeps = ceil(control_dt / timestep)``; the timestep is shrunk (never grown, for
    stability) to ``control_dt / substeps`` when the control period is not a whole number of
    model timesteps (e.g. 60 Hz on a 5 ms model).
    """
    if control_dt <= 0:
        raise ValueError(f"control_dt must be positive, got {control_dt}")
    substeps = max(1, math.ceil(control_dt / timestep - 1e-9))
    return substeps, control_dt / substeps


class SimRandomizer:
    """The physical part of a :class:`DRTable` on one ``MjModel``, in numpy.

    Mirrors :class:`toolkit.envs.randomization.DomainRandomizer` (torch, batched) for the
    quantities a model holds: joint damping, actuator gain (kp and the matching bias), friction,
    masses and inertias, object scale, gravity. Action noise/latency, observation noise and pushes
    are perturbations of the training loop and are not applied in the evaluation sim.
    """

    def __init__(self, model: mujoco.MjModel, table: DRTable, robot_dofs: np.ndarray,
                 robot_actuators: np.ndarray) -> None:
        self.model, self.table = model, table
        self.dofs = np.asarray(robot_dofs)
        self.actuators = np.asarray(robot_actuators)
        self.friction_geoms = np.flatnonzero((model.geom_contype != 0) | (model.geom_conaffinity != 0))
        self.mass_bodies = np.flatnonzero(model.body_mass > 0)
        self.object_geoms = np.array([_name_id(model, mujoco.mjtObj.mjOBJ_GEOM, g) for g in table.object_geoms],
                                     dtype=int)
        self._data = mujoco.MjData(model)  # scratch for mj_setConst
        names = ["dof_damping", "actuator_gainprm", "actuator_biasprm", "geom_friction", "body_mass",
                 "body_inertia", "geom_size", "geom_pos", "geom_rbound", "geom_aabb"]
        self.nominal = {name: getattr(model, name).copy() for name in names}
        self.nominal["gravity"] = model.opt.gravity.copy()

    def fields(self) -> dict[str, Field]:
        """Names and shapes of the values :meth:`sample` draws (for the log)."""
        return {
            "joint_damping": Field((len(self.dofs),)),
            "actuator_gain": Field((len(self.actuators),)),
            "friction": Field((1,)),
            "mass": Field((len(self.mass_bodies),)),
            "object_scale": Field((1,)),
            "gravity": Field((3,)),
        }

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Draw one set of values (scales relative to nominal; gravity in m/s^2)."""
        t = self.table
        log_lo, log_hi = math.log(t.joint_damping[0]), math.log(t.joint_damping[1])
        return {
            "joint_damping": np.exp(rng.uniform(log_lo, log_hi, len(self.dofs))),
            "actuator_gain": rng.uniform(*t.actuator_gain, len(self.actuators)),
            "friction": rng.uniform(*t.friction, 1),
            "mass": rng.uniform(*t.mass, len(self.mass_bodies)),
            "object_scale": rng.uniform(*t.object_scale, 1),
            "gravity": self.nominal["gravity"] + t.gravity_std * rng.standard_normal(3),
        }

    def nominal_values(self) -> dict[str, np.ndarray]:
        """The values that leave the model unchanged."""
        return {name: (self.nominal["gravity"].copy() if name == "gravity" else np.ones(f.shape))
                for name, f in self.fields().items()}

    def apply(self, values: dict[str, np.ndarray]) -> None:
        """Write ``values`` into the model (always from the nominal model, never compounding)."""
        m, nom = self.model, self.nominal
        for name, f in self.fields().items():
            if np.shape(values[name]) != f.shape:
                raise ValueError(f"DR value '{name}' has shape {np.shape(values[name])}, expected {f.shape}")
        m.dof_damping[:] = nom["dof_damping"]
        m.dof_damping[self.dofs] = nom["dof_damping"][self.dofs] * values["joint_damping"]
        kp = nom["actuator_gainprm"][self.actuators, 0] * values["actuator_gain"]
        m.actuator_gainprm[:] = nom["actuator_gainprm"]
        m.actuator_biasprm[:] = nom["actuator_biasprm"]
        m.actuator_gainprm[self.actuators, 0] = kp
        m.actuator_biasprm[self.actuators, 1] = -kp  # position actuator: bias = -kp * q
        m.geom_friction[:] = nom["geom_friction"]
        m.geom_friction[self.friction_geoms, 0] = nom["geom_friction"][self.friction_geoms, 0] * values["friction"]
        m.body_mass[:] = nom["body_mass"]
        m.body_inertia[:] = nom["body_inertia"]
        m.body_mass[self.mass_bodies] = nom["body_mass"][self.mass_bodies] * values["mass"]
        m.body_inertia[self.mass_bodies] = nom["body_inertia"][self.mass_bodies] * values["mass"][:, None]
        for name in ("geom_size", "geom_pos", "geom_rbound", "geom_aabb"):
            field = getattr(m, name)
            field[:] = nom[name]
            field[self.object_geoms] = nom[name][self.object_geoms] * values["object_scale"][0]
        m.opt.gravity[:] = values["gravity"]
        mujoco.mj_setConst(m, self._data)  # masses changed: refresh the derived constants


def _name_id(model: mujoco.MjModel, obj: mujoco.mjtObj, name: str) -> int:
    index = mujoco.mj_name2id(model, obj, name)
    if index < 0:
        raise ValueError(f"domain randomization names {obj.name[6:].lower()} '{name}', which the model lacks")
    return index


class SimBackend(Backend):
    """The task's MuJoCo scene stepped by the control loop (evaluation and dry runs).

    Args:
        task: the task whose scene, reset distribution and readings are used.
        control_dt: seconds of simulated time per control step (the policy's).
        randomize: draw the task's DR table per episode (physical parameters only).
    """

    name = "sim"

    def __init__(self, task: Task, control_dt: float, randomize: bool = False) -> None:
        super().__init__(task)
        self.control_dt = control_dt
        self.randomize = randomize
        self.model: mujoco.MjModel | None = None
        self.data: mujoco.MjData | None = None
        self.randomizer: SimRandomizer | None = None
        self._last_time = math.nan

    def open(self) -> None:
        if self.model is not None:
            return
        model = self.task.build_model()
        self.task.bind(model)
        self.substeps, model.opt.timestep = substeps_for(self.control_dt, model.opt.timestep)
        self.model, self.data = model, mujoco.MjData(model)
        self.view = DataView(self.data)
        self._actuators = np.asarray(self.task.indices.actuator_ids)
        if self.randomize:
            table = self.task.dr_table()
            if table is None:
                raise ValueError(f"task '{self.task.name}' has no domain-randomization table; run without --randomize")
            self.randomizer = SimRandomizer(model, table, self.task.indices.dof_ids, self._actuators)

    def reset(self, rng: np.random.Generator) -> ResetResult:
        model, data = self.model, self.data
        mujoco.mj_resetData(model, data)
        values = {}
        if self.randomizer is not None:
            values = {f"dr/{k}": v for k, v in self.randomizer.sample(rng).items()}
            self.randomizer.apply({k[3:]: v for k, v in values.items()})
        task_state = self.task.write_reset(self.view, np.zeros(1, dtype=np.int64), rng.random)
        data.xfrc_applied[:] = 0.0
        mujoco.mj_forward(model, data)
        self._last_time = math.nan
        return ResetResult(task_state={k: np.array(v, dtype=np.float64) for k, v in task_state.items()},
                           joint_targets=data.ctrl[self._actuators].copy(), episode_values=values)

    def read(self) -> tuple[dict[str, np.ndarray], bool]:
        readings = {k: np.array(v, dtype=np.float64) for k, v in self.task.read(self.view).items()}
        fresh = self.data.time != self._last_time
        self._last_time = self.data.time
        return readings, fresh

    def write(self, joint_targets: np.ndarray) -> None:
        self.data.ctrl[self._actuators] = joint_targets
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        settle_derived(self.model, self.data)

    def hold(self) -> None:
        """Nothing to do: the simulated robot only moves when :meth:`write` steps it."""

    def close(self) -> None:
        self.model = self.data = None

    # --- logging --------------------------------------------------------------------
    def info(self) -> dict:
        return {"backend": self.name, "timestep": float(self.model.opt.timestep), "substeps": self.substeps,
                "randomize": self.randomize, "state_spec": int(STATE_SPEC)}

    def step_fields(self) -> dict[str, Field]:
        m = self.model
        return {"sim/qpos": Field((m.nq,)), "sim/qvel": Field((m.nv,)), "sim/time": Field(()),
                "sim/state": Field((mujoco.mj_stateSize(m, STATE_SPEC),))}

    def state(self) -> dict[str, np.ndarray]:
        d = self.data
        return {"sim/qpos": d.qpos.copy(), "sim/qvel": d.qvel.copy(), "sim/time": np.float64(d.time),
                "sim/state": integration_state(self.model, d)}

    def episode_fields(self) -> dict[str, Field]:
        if self.randomizer is None:
            return {}
        return {f"dr/{k}": f for k, f in self.randomizer.fields().items()}
