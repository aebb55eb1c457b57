"""The task protocol: data plus pure batched functions.

Every function takes and returns arrays of one namespace (numpy or torch; see the array
API) with a leading env dimension ``n``. The training VecEnv calls them with torch tensors,
the deployment runner with numpy arrays, so both compute observations and rewards with the
same code. Only :meth:`Task.read` and :meth:`Task.write_reset` touch a simulator, and only
through the duck-typed state arrays of :class:`toolkit.sim.base.BatchedSim` (``qpos``,
``qvel``, ``mocap_*``, ``data_field``).

Vocabulary:
    readings: what the robot's sensors give, a dict of (n, k) arrays. ``joint_pos`` (n, J) is
        always present; tasks add object readings (valve angle, cube pose, ...).
    task_state: per-env goal/bookkeeping arrays owned by the caller, written at reset.
    rand: a callable ``rand(shape) -> U[0, 1)`` float64 array in the caller's namespace and
        device. ``shape[0]`` is the number of envs concerned (``len(ids)`` in
        :meth:`Task.write_reset`, n elsewhere) and row r belongs to the r-th of them: the VecEnv
        draws each row from that env's own random stream, so draw per-env values as (k, ...).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from array_api_compat import array_namespace

from toolkit.contract.obs_layout import ObsLayout
from toolkit.contract.robot import RobotSpec

if TYPE_CHECKING:  # mujoco is imported lazily: the hardware runner works without it
    import mujoco

Array = Any
Rand = Callable[[tuple[int, ...]], Array]


class Task(ABC):
    """A manipulation task for a :class:`RobotSpec`.

    Subclasses set the class attributes and implement the abstract methods. ``reward_scales``
    multiplies the dict returned by :meth:`reward_terms` (terms are unscaled magnitudes; the
    scales carry the signs), in the MuJoCo Playground style.
    """

    name: str
    robot: RobotSpec
    obs_layout: ObsLayout
    episode_steps: int
    reward_scales: Mapping[str, float]
    #: reading name -> observation-noise std applied under domain randomization.
    noisy_readings: Mapping[str, float] = {}
    #: name of the scene camera that frames the robot and its object (videos, render(), replays).
    camera: str = "overview"
    #: set by :meth:`bind` (see :func:`bind_robot`).
    indices: RobotIndices

    @property
    def critic_obs_layout(self) -> ObsLayout:
        """Layout of the critic's (possibly privileged) observation; the actor's by default."""
        return self.obs_layout

    @property
    def asymmetric(self) -> bool:
        return self.critic_obs_layout != self.obs_layout

    # --- simulation side -------------------------------------------------------------
    @abstractmethod
    def build_model(self) -> mujoco.MjModel:
        """Compile the task's scene (robot + objects)."""

    @abstractmethod
    def bind(self, model: mujoco.MjModel) -> None:
        """Resolve joint/site/body indices of ``model`` used by :meth:`read`/:meth:`write_reset`;
        sets :attr:`indices`."""

    def dr_table(self):
        """The robot's :class:`toolkit.envs.randomization.DRTable` (None: no randomization)."""
        return None

    @abstractmethod
    def read(self, sim) -> dict[str, Array]:
        """Sensor readings of every env from the simulator state."""

    @abstractmethod
    def write_reset(self, sim, ids: Array, rand: Rand) -> dict[str, Array]:
        """Write the initial state of envs ``ids`` into ``sim`` (qpos, qvel, ctrl, mocap) and
        return their task_state rows (each (len(ids), ...))."""

    #: the readings :meth:`show` needs to pose the model (a logged episode must have them).
    pose_readings: tuple[str, ...] = ("joint_pos",)

    def show(self, sim, readings: dict[str, Array], task_state: dict[str, Array]) -> None:
        """Pose the model in ``sim`` (rows of ``qpos``, ``mocap_*``; then the caller runs forward
        kinematics) so that it shows ``readings`` and the goals of ``task_state``: how a video shows
        a logged episode, hardware logs included. The default poses the robot's joints only."""
        xp = array_namespace(sim.qpos)
        sim.qpos[:, xp.asarray(self.indices.qpos_adr, device=sim.qpos.device)] = readings["joint_pos"]

    def privileged(self, sim) -> dict[str, Array]:
        """Extra simulator-only readings for an asymmetric critic (default: none)."""
        return {}

    # --- shared with deployment ------------------------------------------------------
    @abstractmethod
    def observe(self, readings, task_state, joint_targets, last_action) -> Array:
        """Actor observation, (n, obs_layout.size), in layout order."""

    def critic_observe(self, readings, task_state, joint_targets, last_action, privileged) -> Array:
        """Critic observation, (n, critic_obs_layout.size)."""
        return self.observe(readings, task_state, joint_targets, last_action)

    @abstractmethod
    def reward_terms(self, readings, task_state, action, joint_targets) -> dict[str, Array]:
        """Unscaled reward terms, each (n,); the reward is sum(scale[k] * term[k])."""

    @abstractmethod
    def success(self, readings, task_state) -> Array:
        """Per-step success flag, bool (n,)."""

    def terminated(self, readings, task_state) -> Array:
        """Failure termination (object dropped, ...), bool (n,). Default: never."""
        joint_pos = readings["joint_pos"]
        xp = array_namespace(joint_pos)
        return xp.zeros(joint_pos.shape[0], dtype=xp.bool, device=joint_pos.device)

    #: names of the :meth:`episode_metrics` (the trainer logs their per-episode means).
    metric_names: tuple[str, ...] = ()

    def episode_metrics(self, task_state) -> dict[str, Array]:
        """Task-specific per-env metrics reported when an episode ends (e.g. consecutive
        successes), each (n,); the VecEnv puts them in ``info["episode_metrics"]``."""
        return {}

    def update_goals(self, readings, task_state, success, rand: Rand) -> Array | None:
        """Called after each step: tasks whose goal resamples on success (Shadow Hand) update
        task_state in place and return a bool (n,) mask of envs whose goal changed."""
        return None


def constant_like(values, like) -> Array:
    """``values`` (numpy data such as a spec's constants) as an array of ``like``'s namespace,
    dtype and device, copied: the result never aliases read-only constants (torch cannot wrap
    read-only numpy memory)."""
    xp = array_namespace(like)
    return xp.asarray(np.array(values), dtype=like.dtype, device=like.device)


@dataclass(frozen=True)
class RobotIndices:
    """Where a robot's actuated joints live in a compiled model.

    Attributes:
        actuator_ids: actuator index per spec joint, (J,).
        dof_ids: dof indices driven by the actuators (their damping is randomized), (D,).
        qpos_adr: qpos addresses of the measured joints, (J,) for direct-drive robots.
    """

    actuator_ids: np.ndarray
    dof_ids: np.ndarray
    qpos_adr: np.ndarray


def bind_robot(model: mujoco.MjModel, robot: RobotSpec, measured_joints: tuple[str, ...] | None = None) -> RobotIndices:
    """Check that ``model`` has the spec's actuators (in order, with the spec's limits) and
    return their indices. ``measured_joints`` defaults to joints named like the actuators."""
    import mujoco

    actuator_ids = []
    for name in robot.joint_names:
        index = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, name)
        if index < 0:
            raise ValueError(f"model has no actuator '{name}' required by robot '{robot.name}'")
        actuator_ids.append(index)
    actuator_ids = np.asarray(actuator_ids)
    ctrl_low, ctrl_high = model.actuator_ctrlrange[actuator_ids].T
    if not (np.allclose(ctrl_low, robot.joint_low, atol=1e-6) and np.allclose(ctrl_high, robot.joint_high, atol=1e-6)):
        raise ValueError(f"actuator ctrlrange of the model differs from robot '{robot.name}' joint limits")
    measured = measured_joints or robot.joint_names
    joint_ids = []
    for name in measured:
        index = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
        if index < 0:
            raise ValueError(f"model has no joint '{name}' required by robot '{robot.name}'")
        joint_ids.append(index)
    joint_ids = np.asarray(joint_ids)
    return RobotIndices(actuator_ids=actuator_ids, dof_ids=model.jnt_dofadr[joint_ids].copy(),
                        qpos_adr=model.jnt_qposadr[joint_ids].copy())
