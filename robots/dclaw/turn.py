"""D'Claw valve turning (ROBEL DClawTurn): turn the three-spoke valve to a goal angle.

Observation (actor and critic), in order::

    joint_pos      9   measured joint angles (rad)
    joint_targets  9   the position targets in force (rad)
    valve_sincos   2   sin and cos of the valve angle
    goal_error     1   goal - valve angle, wrapped to [-pi, pi]
    last_action    9   the policy's previous action, [-1, 1]

Reward terms (ROBEL's shape, scales in ``REWARD_SCALES``): goal distance |e|, pose deviation
from the default pose, joint speed above 0.5 rad/s, and bonuses for |e| < 0.25 and |e| < 0.1.
Success: |e| < 0.1 rad. Episodes end by truncation only (``episode_steps``).

Everything but :meth:`TurnTask.build_model`/:meth:`bind`/:meth:`read`/:meth:`write_reset`
is shared with the deployment runner, which calls it with numpy arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from array_api_compat import array_namespace

from robots.dclaw.spec import SPEC, TURN_XML
from toolkit.contract.dr import DRTable
from toolkit.contract.obs_layout import ObsLayout
from toolkit.contract.task import Task, bind_robot, constant_like

OBS_LAYOUT = ObsLayout((
    ("joint_pos", 9),
    ("joint_targets", 9),
    ("valve_sincos", 2),
    ("goal_error", 1),
    ("last_action", 9),
))

REWARD_SCALES = {
    "goal_distance": -5.0,
    "pose_deviation": -1.0,
    "joint_speed": -1.0,
    "near_goal": 10.0,
    "at_goal": 50.0,
}

SUCCESS_THRESHOLD = 0.1

DR = DRTable(object_bodies=("valve",), object_geoms=("valve_hub", "valve_spoke0", "valve_spoke1", "valve_spoke2"),
             push_force=0.0, push_torque=0.02)


def _goal_quaternion(goal):
    """The goal marker's orientation (n, 4): the goal angle (n, 1) about z."""
    xp = array_namespace(goal)
    return xp.concat([xp.cos(goal / 2), xp.zeros_like(goal), xp.zeros_like(goal), xp.sin(goal / 2)], axis=-1)


def wrap_angle(angle):
    """Wrap to [-pi, pi) (numpy or torch)."""
    return (angle + math.pi) % (2 * math.pi) - math.pi


@dataclass
class TurnTask(Task):
    """Valve turning with a random start angle and a goal ``goal_offset`` away from it.

    Attributes:
        episode_steps: control steps per episode (10 Hz).
        goal_offset: the goal is start +- U(goal_offset) rad (random sign).
        joint_noise: half-width of the uniform noise on the initial joint angles (rad).
    """

    episode_steps: int = 40
    goal_offset: tuple[float, float] = (0.3, math.pi / 2)
    joint_noise: float = 0.05

    name = "dclaw-turn"
    robot = SPEC
    obs_layout = OBS_LAYOUT
    reward_scales = REWARD_SCALES
    noisy_readings = {"joint_pos": 0.01, "valve_angle": 0.02}

    def __post_init__(self) -> None:
        lo, hi = self.goal_offset
        if not 0 <= lo <= hi <= math.pi:
            raise ValueError(f"goal_offset must satisfy 0 <= low <= high <= pi, got {self.goal_offset}")
        if self.episode_steps < 1:
            raise ValueError(f"episode_steps must be >= 1, got {self.episode_steps}")

    # --- simulation side -------------------------------------------------------------
    def build_model(self):
        import mujoco

        return mujoco.MjModel.from_xml_path(str(TURN_XML))

    def bind(self, model) -> None:
        import mujoco

        self.indices = bind_robot(model, self.robot)
        valve = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, "valve")
        self._valve_qpos = int(model.jnt_qposadr[valve])
        self._valve_dof = int(model.jnt_dofadr[valve])
        self._qpos_adr = self.indices.qpos_adr
        self._dof_adr = self.indices.dof_ids
        self._actuators = self.indices.actuator_ids
        self._goal_mocap = int(model.body_mocapid[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "goal")])

    def read(self, sim) -> dict:
        return {
            "joint_pos": sim.qpos[:, self._qpos_adr],
            "joint_vel": sim.qvel[:, self._dof_adr],
            "valve_angle": sim.qpos[:, self._valve_qpos:self._valve_qpos + 1],
        }

    def write_reset(self, sim, ids, rand) -> dict:
        xp = array_namespace(sim.qpos)
        k = ids.shape[0]
        pose = constant_like(self.robot.default_pose, sim.qpos)
        # The default pose sits on the middle joints' lower limit: keep the noisy start inside.
        joints = xp.clip(pose + self.joint_noise * (2 * rand((k, 9)) - 1),
                         constant_like(self.robot.joint_low, pose), constant_like(self.robot.joint_high, pose))
        valve = math.pi * (2 * rand((k, 1)) - 1)
        lo, hi = self.goal_offset
        sign = xp.where(rand((k, 1)) < 0.5, -1.0, 1.0)
        goal = wrap_angle(valve + sign * (lo + (hi - lo) * rand((k, 1))))
        rows = ids[:, None]
        sim.qpos[rows, xp.asarray(self._qpos_adr, device=sim.qpos.device)] = xp.astype(joints, sim.qpos.dtype)
        sim.qpos[rows, self._valve_qpos] = xp.astype(valve, sim.qpos.dtype)
        sim.qvel[ids] = 0.0
        sim.ctrl[rows, xp.asarray(self._actuators, device=sim.qpos.device)] = xp.broadcast_to(pose, (k, 9))
        # The goal marker is visual only: a mocap quaternion about z.
        sim.mocap_quat[ids, self._goal_mocap] = xp.astype(_goal_quaternion(goal), sim.mocap_quat.dtype)
        return {"goal_angle": goal}

    pose_readings = ("joint_pos", "valve_angle")

    def show(self, sim, readings, task_state) -> None:
        xp = array_namespace(sim.qpos)
        sim.qpos[:, xp.asarray(self._qpos_adr, device=sim.qpos.device)] = readings["joint_pos"]
        sim.qpos[:, self._valve_qpos] = readings["valve_angle"][:, 0]
        sim.mocap_quat[:, self._goal_mocap] = xp.astype(_goal_quaternion(task_state["goal_angle"]),
                                                        sim.mocap_quat.dtype)

    def dr_table(self) -> DRTable:
        return DR

    # --- shared with deployment ------------------------------------------------------
    def observe(self, readings, task_state, joint_targets, last_action):
        xp = array_namespace(readings["joint_pos"])
        valve = readings["valve_angle"]
        return OBS_LAYOUT.concat({
            "joint_pos": readings["joint_pos"],
            "joint_targets": joint_targets,
            "valve_sincos": xp.concat([xp.sin(valve), xp.cos(valve)], axis=-1),
            "goal_error": wrap_angle(task_state["goal_angle"] - valve),
            "last_action": last_action,
        }, xp)

    def reward_terms(self, readings, task_state, action, joint_targets) -> dict:
        xp = array_namespace(readings["joint_pos"])
        error = xp.abs(wrap_angle(task_state["goal_angle"] - readings["valve_angle"]))[:, 0]
        pose = constant_like(self.robot.default_pose, readings["joint_pos"])
        speed = xp.abs(readings["joint_vel"])
        fast = xp.where(speed >= 0.5, speed, xp.zeros_like(speed))
        return {
            "goal_distance": error,
            "pose_deviation": xp.linalg.vector_norm(readings["joint_pos"] - pose, axis=-1),
            "joint_speed": xp.linalg.vector_norm(fast, axis=-1),
            "near_goal": xp.astype(error < 0.25, error.dtype),
            "at_goal": xp.astype(error < SUCCESS_THRESHOLD, error.dtype),
        }

    def success(self, readings, task_state):
        xp = array_namespace(readings["valve_angle"])
        return (xp.abs(wrap_angle(task_state["goal_angle"] - readings["valve_angle"])) < SUCCESS_THRESHOLD)[:, 0]
