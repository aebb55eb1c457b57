"""D'Claw pose (ROBEL DClawPose): move the nine joints to a goal pose.

The simplest D'Claw task: a sanity check of a hardware set-up, and a task PQL learns in
a couple of minutes on a CPU (the tests use it to show learning). Same scene as turn; the
goals stay within ``goal_range`` of the default pose, where the fingers clear the valve.

Observation: joint_pos (9), joint_targets (9), goal_error (9) = goal - joint_pos,
last_action (9). Reward: -|error|_2 (scaled) plus a bonus inside the success threshold.
Success: every joint within 0.1 rad of its goal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from array_api_compat import array_namespace

from robots.dclaw.spec import SPEC, TURN_XML
from robots.dclaw.turn import DR
from toolkit.contract.dr import DRTable
from toolkit.contract.obs_layout import ObsLayout
from toolkit.contract.task import Task, bind_robot, constant_like

OBS_LAYOUT = ObsLayout((("joint_pos", 9), ("joint_targets", 9), ("goal_error", 9), ("last_action", 9)))
REWARD_SCALES = {"pose_error": -1.0, "at_goal": 1.0}
SUCCESS_THRESHOLD = 0.1


@dataclass
class PoseTask(Task):
    """Reach a random joint pose within ``goal_range`` rad of the default pose."""

    episode_steps: int = 30
    goal_range: float = 0.3

    name = "dclaw-pose"
    robot = SPEC
    obs_layout = OBS_LAYOUT
    reward_scales = REWARD_SCALES
    noisy_readings = {"joint_pos": 0.01}

    def build_model(self):
        import mujoco

        return mujoco.MjModel.from_xml_path(str(TURN_XML))

    def bind(self, model) -> None:
        self.indices = bind_robot(model, self.robot)

    def read(self, sim) -> dict:
        return {"joint_pos": sim.qpos[:, self.indices.qpos_adr], "joint_vel": sim.qvel[:, self.indices.dof_ids]}

    def write_reset(self, sim, ids, rand) -> dict:
        xp = array_namespace(sim.qpos)
        k, device = ids.shape[0], sim.qpos.device
        pose = constant_like(self.robot.default_pose, sim.qpos)
        low = constant_like(np.maximum(self.robot.default_pose - self.goal_range, self.robot.joint_low), sim.qpos)
        high = constant_like(np.minimum(self.robot.default_pose + self.goal_range, self.robot.joint_high), sim.qpos)
        goal = low + (high - low) * rand((k, 9))
        rows = ids[:, None]
        sim.qpos[rows, xp.asarray(self.indices.qpos_adr, device=device)] = xp.broadcast_to(pose, (k, 9))
        sim.qvel[ids] = 0.0
        sim.ctrl[rows, xp.asarray(self.indices.actuator_ids, device=device)] = xp.broadcast_to(pose, (k, 9))
        return {"goal_pose": goal}

    def dr_table(self) -> DRTable:
        return DR

    def observe(self, readings, task_state, joint_targets, last_action):
        xp = array_namespace(readings["joint_pos"])
        return OBS_LAYOUT.concat({"joint_pos": readings["joint_pos"], "joint_targets": joint_targets,
                                  "goal_error": task_state["goal_pose"] - readings["joint_pos"],
                                  "last_action": last_action}, xp)

    def reward_terms(self, readings, task_state, action, joint_targets) -> dict:
        xp = array_namespace(readings["joint_pos"])
        error = task_state["goal_pose"] - readings["joint_pos"]
        return {"pose_error": xp.linalg.vector_norm(error, axis=-1),
                "at_goal": xp.astype(self.success(readings, task_state), error.dtype)}

    def success(self, readings, task_state):
        xp = array_namespace(readings["joint_pos"])
        return xp.max(xp.abs(task_state["goal_pose"] - readings["joint_pos"]), axis=-1) < SUCCESS_THRESHOLD
