"""Evaluation-sim backend: the task's own MuJoCo scene on one ``mujoco.MjData``.

The task's :meth:`~toolkit.contract.task.Task.read`/:meth:`~toolkit.contract.task.Task.write_reset`
are written for batched state arrays ``(n, ...)``; :class:`DataView` presents a single ``MjData``
as a batch of one (``data.qpos[None]`` and friends are writable views), so the very functions the
trainer uses reset and read the deployment sim.

The simulated clock is driven by the control loop: :meth:`SimBackend.write` applies the command
and advances the physics by one control period (the contract's substeps rule). With
``randomize`` the task's DR table is drawn per episode by the training env's own
:class:`~toolkit.contract.dr.DomainRandomizer` (physics parameters, pushes; the runner applies its
action noise, action latency and observation noise), from the runner's per-env stream: with the
same seed an episode here is the training env's episode. The values drawn are logged and
:mod:`deploy.replay` re-applies them.

With a ``calibration`` (``deploy.run --calibration``) the sim is the fitted one: its damping,
gain and friction scales make the nominal model (DR then scales around it, as in training with
``--calibration``) and commands reach the actuators ``action_latency`` control steps late. The
fitted zero offsets belong to the hardware's sensors: the calibrated sim reports physical
angles, as a calibrated robot does. ``emulate_offsets`` makes it an *uncalibrated* robot with
those offsets instead (readings ``q + o``, a command ``c`` goes to ``c - o``): the "hardware"
of the calibration benchmark.
"""

from __future__ import annotations

import json
import math
import sys

import mujoco
import numpy as np

from deploy.backends.base import Backend, Field, ResetResult
from toolkit.contract.calibration import (
    Calibration,
    LatencyLine,
    calibration_targets,
    physical_target,
    reported_angle,
)
from toolkit.contract.dr import DomainRandomizer
from toolkit.contract.model_fields import SingleModelFields
from toolkit.contract.policy import decode_metadata
from toolkit.contract.step import substeps
from toolkit.contract.task import Task

#: Everything mj_step needs to continue bit-identically (qpos, qvel, act, time, warmstart, ctrl,
#: applied forces, mocap, ...): what replay restores.
STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION

_ENV = np.zeros(1, dtype=np.int64)  # the one env's index, as the task and DR functions take ids


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


class SimBackend(Backend):
    """The task's MuJoCo scene stepped by the control loop (evaluation and dry runs).

    Args:
        task: the task whose scene, reset distribution and readings are used.
        control_dt: seconds of simulated time per control step (the policy's).
        randomize: draw the task's DR table per episode, as the training env does.
        calibration: the fitted sim (see the module docstring); refused for another robot or task.
        emulate_offsets: behave as an uncalibrated robot with the calibration's zero offsets.
    """

    name = "sim"

    def __init__(self, task: Task, control_dt: float, randomize: bool = False,
                 calibration: Calibration | None = None, emulate_offsets: bool = False) -> None:
        super().__init__(task)
        if calibration is not None:
            calibration.check_for(task.robot.name, task.name, task.robot.joint_names)
        elif emulate_offsets:
            raise ValueError("emulate_offsets needs a calibration (whose offsets are emulated)")
        self.control_dt = control_dt
        self.randomize = randomize
        self.calibration = calibration
        self._offsets = calibration.joint_offsets if emulate_offsets else None
        self._latency: LatencyLine | None = None
        self.model: mujoco.MjModel | None = None
        self.data: mujoco.MjData | None = None
        self._randomizer: DomainRandomizer | None = None
        self._rand = None
        self._last_time = math.nan

    @property
    def randomizer(self) -> DomainRandomizer | None:
        return self._randomizer

    def open(self) -> None:
        if self.model is not None:
            return
        model = self.task.build_model()
        self.task.bind(model)
        self.substeps, model.opt.timestep = substeps(self.control_dt, model.opt.timestep)
        self.model, self.data = model, mujoco.MjData(model)
        self.view = DataView(self.data)
        self._actuators = np.asarray(self.task.indices.actuator_ids)
        if self.calibration is not None:  # before the randomizer: its nominal model is the fitted one
            self.calibration.apply(SingleModelFields(model), calibration_targets(model, self.task))
            if self.calibration.action_latency:
                self._latency = LatencyLine(self.calibration.action_latency, np.zeros((1, len(self._actuators))))
        if self.randomize:
            table = self.task.dr_table()
            if table is None:
                raise ValueError(f"task '{self.task.name}' has no domain-randomization table; run without --randomize")
            self._randomizer = DomainRandomizer(table, SingleModelFields(model), model, self.task.indices.dof_ids,
                                                self._actuators)

    def reset(self, rand) -> ResetResult:
        model, data = self.model, self.data
        self._rand = rand
        mujoco.mj_resetData(model, data)
        values = {}
        if self._randomizer is not None:
            self._randomizer.sample(_ENV, rand)
            values = {f"dr/{k}": v[0].copy() for k, v in self._randomizer.flat_values().items()}
        task_state = self.task.write_reset(self.view, _ENV, rand)
        data.xfrc_applied[:] = 0.0
        mujoco.mj_forward(model, data)
        self._last_time = math.nan
        joint_targets = data.ctrl[self._actuators].copy()
        if self._offsets is not None:  # the targets as an uncalibrated robot's servos report them
            joint_targets = reported_angle(joint_targets, self._offsets)
        self.start_commands(joint_targets)
        return ResetResult(task_state={k: np.array(v, dtype=np.float64) for k, v in task_state.items()},
                           joint_targets=joint_targets, episode_values=values)

    def start_commands(self, joint_targets: np.ndarray) -> None:
        """An episode's first targets (J,), as commands are sent: the actuators hold them until
        the first command arrives, ``action_latency`` steps after it is sent (a replay's start)."""
        targets = np.asarray(joint_targets, dtype=np.float64)
        if self._offsets is not None:
            targets = physical_target(targets, self._offsets)
        self.data.ctrl[self._actuators] = targets
        if self._latency is not None:
            self._latency.reset(targets[None])

    def apply_randomization(self, values: dict[str, np.ndarray]) -> None:
        """Put the model in the state of logged DR draws (``dr/<name>`` values without the prefix)."""
        if self._randomizer is None:
            raise ValueError("apply_randomization needs a backend opened with randomize=True")
        self._randomizer.set_values(_ENV, values)

    def read(self) -> tuple[dict[str, np.ndarray], bool]:
        readings = {k: np.array(v, dtype=np.float64) for k, v in self.task.read(self.view).items()}
        if self._offsets is not None:
            readings["joint_pos"] = reported_angle(readings["joint_pos"], self._offsets)
        fresh = self.data.time != self._last_time
        self._last_time = self.data.time
        return readings, fresh

    def write(self, joint_targets: np.ndarray) -> None:
        if self._randomizer is not None:
            self._randomizer.push(self.view.xfrc_applied, self._rand)
        self.advance(joint_targets)

    def advance(self, joint_targets: np.ndarray, applied_forces: np.ndarray | None = None) -> None:
        """One control period with ``joint_targets`` (and, when given, these ``xfrc_applied``
        (nbody, 6) forces instead of the ones in place): what a replay re-executes. The targets
        pass the calibration's latency line and, when emulated, its offsets."""
        if self._offsets is not None:
            joint_targets = physical_target(joint_targets, self._offsets)
        if self._latency is not None:
            joint_targets = self._latency.push(np.asarray(joint_targets, dtype=np.float64)[None])[0]
        self.data.ctrl[self._actuators] = joint_targets
        if applied_forces is not None:
            self.data.xfrc_applied[:] = applied_forces
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        settle_derived(self.model, self.data)

    def hold(self) -> None:
        """Nothing to do: the simulated robot only moves when :meth:`write` steps it."""

    def close(self) -> None:
        self.model = self.data = None

    # --- logging --------------------------------------------------------------------
    def info(self) -> dict:
        info = {"backend": self.name, "timestep": float(self.model.opt.timestep), "substeps": self.substeps,
                "randomize": self.randomize, "state_spec": int(STATE_SPEC)}
        if self.calibration is not None:
            info.update(calibration=self.calibration.to_dict(), emulate_offsets=self._offsets is not None)
        return info

    def step_fields(self) -> dict[str, Field]:
        m = self.model
        return {"sim/qpos": Field((m.nq,)), "sim/qvel": Field((m.nv,)), "sim/time": Field(()),
                "sim/state": Field((mujoco.mj_stateSize(m, STATE_SPEC),))}

    def state(self) -> dict[str, np.ndarray]:
        d = self.data
        return {"sim/qpos": d.qpos.copy(), "sim/qvel": d.qvel.copy(), "sim/time": np.float64(d.time),
                "sim/state": integration_state(self.model, d)}

    def episode_fields(self) -> dict[str, Field]:
        if self._randomizer is None:
            return {}
        return {f"dr/{k}": Field(v.shape[1:]) for k, v in self._randomizer.flat_values().items()}


def log_simulator(reader, episode=None) -> tuple[Task, SimBackend]:
    """The task's sim as the logged run had it: same task, control period, timestep, and the DR
    values of ``episode`` (a :class:`deploy.log.Episode`; None: a randomized log's model, ready
    for any episode's values), and the calibration of a fitted (or uncalibrated-robot) sim's log.
    ``reader``: an open :class:`deploy.log.LogReader`."""
    from robots import make_task

    metadata = decode_metadata(json.loads(reader.attrs["policy_metadata"]))
    task = make_task(metadata.task, **metadata.task_overrides)
    dr = {} if episode is None else {k[3:]: v for k, v in episode.reset.items() if k.startswith("dr/")}
    randomized = bool(dr) or (episode is None and bool(reader.attrs.get("randomize", False)))
    info = json.loads(reader.attrs["backend_info"])
    calibration = info.get("calibration")  # a calibrated (or uncalibrated-robot) sim's log
    calibration = None if calibration is None else Calibration.from_dict(calibration, "the log's calibration")
    backend = SimBackend(task, float(reader.attrs["control_dt"]), randomize=randomized, calibration=calibration,
                         emulate_offsets=bool(info.get("emulate_offsets", False)))
    backend.open()
    logged_timestep = info.get("timestep")
    if logged_timestep is not None and not np.isclose(logged_timestep, backend.model.opt.timestep):
        print(f"deploy.replay: warning: the log used a {logged_timestep} s timestep, the model now "
              f"{backend.model.opt.timestep} s", file=sys.stderr)
    if dr:
        backend.apply_randomization(dr)
    return task, backend
