"""Shadow Hand in-hand cube reorientation (IsaacGymEnvs ``ShadowHand``, block): turn the
cube lying on the palm to a goal orientation; each time it gets there a new goal is drawn,
and the episode counts the goals reached in a row until the cube drops or time runs out.

Actor observation (what a real hand with a cube tracker senses), in order, 79 values::

    joint_pos         20  actuated joint angles (rad)
    distal_joint_pos   4  coupled distal joints FFJ0, MFJ0, RFJ0, LFJ0 (rad)
    joint_targets     20  the position targets in force (rad)
    cube_pos           3  cube centre - CUBE_HOLD_POS (m, world frame)
    cube_quat          4  cube orientation (w, x, y, z), w >= 0
    goal_quat          4  goal orientation, w >= 0
    goal_rel_quat      4  cube * goal^-1, w >= 0 (identity at the goal)
    last_action       20  the policy's previous action, [-1, 1]

Critic observation (asymmetric; simulator-only extras appended), 125 values::

    <the 79 actor values>
    joint_vel         24  all hand joint velocities (rad/s)
    cube_linvel        3  cube linear velocity (m/s, world frame)
    cube_angvel        3  cube angular velocity (rad/s, cube frame: MuJoCo's free joint)
    fingertip_pos     15  FF, MF, RF, LF, TH tip sites - cube centre (m, world frame)
    rotation_error     1  angle between cube and goal (rad)

Reward terms (IsaacGymEnvs' shape; unscaled here, scales with signs in ``REWARD_SCALES``):
``distance`` |cube - CUBE_HOLD_POS| (m), ``rotation`` 1 / (theta + 0.1) with theta the
cube-goal angle, ``action`` |a|^2, ``success`` 1 when a goal is reached, ``fall`` 1 when
the cube dropped. IsaacGymEnvs uses fall penalty 0; we penalise -50 (1/5 of the goal bonus)
so that dropping costs more than the lost future reward of a poorly rotated cube.

Success: theta < ``success_tolerance`` (0.4 rad by default for CPU learnability; the design
and IsaacGymEnvs use 0.1, pass ``success_tolerance=0.1`` for that). Failure (terminated):
the cube centre is ``fall_drop`` (0.24 m) below its resting height on the palm.
Goals are the cube's orientation turned about a uniform random axis by an angle
U(goal_angle); with the default (pi/4, pi) they reach every orientation (IsaacGymEnvs draws
goals uniformly on SO(3), whose angles to the cube are larger on average: 2.2 vs 2.0 rad).

Episode: 200 steps at 20 Hz = 10 s, the simulated time of IsaacGymEnvs' 600 steps at 60 Hz.

The ``goal`` mocap marker shows the episode's first goal only: :meth:`Task.update_goals` has no
simulator access, so a renderer should pose it from ``task_state["goal_quat"]``.

Everything but :meth:`ReorientTask.build_model`/``bind``/``read``/``privileged``/
``write_reset`` is shared with deployment and runs on numpy arrays as on torch tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from array_api_compat import array_namespace

from robots.shadow_hand.scene import CUBE_HOLD_POS, CUBE_START
from robots.shadow_hand.spec import (
    ALL_JOINT_NAMES,
    COUPLED_JOINTS,
    COUPLING_RATIO,
    FINGERTIP_SITES,
    JOINT_NAMES,
    MODEL_PREFIX,
    SPEC,
)
from toolkit.contract.dr import DRTable
from toolkit.contract.obs_layout import ObsLayout
from toolkit.contract.task import Task, bind_robot, constant_like
from toolkit.rotations import (
    axis_from_uniform,
    quat_angle,
    quat_canonical,
    quat_conjugate,
    quat_distance,
    quat_from_axis_angle,
    quat_mul,
    quat_normalize,
)

OBS_LAYOUT = ObsLayout((
    ("joint_pos", 20),
    ("distal_joint_pos", 4),
    ("joint_targets", 20),
    ("cube_pos", 3),
    ("cube_quat", 4),
    ("goal_quat", 4),
    ("goal_rel_quat", 4),
    ("last_action", 20),
))

CRITIC_OBS_LAYOUT = ObsLayout(OBS_LAYOUT.fields + (
    ("joint_vel", 24),
    ("cube_linvel", 3),
    ("cube_angvel", 3),
    ("fingertip_pos", 15),
    ("rotation_error", 1),
))

REWARD_SCALES = {
    "distance": -10.0,
    "rotation": 1.0,
    "action": -0.0002,
    "success": 250.0,
    "fall": -50.0,
}

#: theta offset of the rotation term 1 / (theta + ROTATION_EPS): caps it at 10 at the goal.
ROTATION_EPS = 0.1

#: The design's ranges (DRTable defaults). Pushes are scaled to the 71 g cube: 0.2 N for one
#: 50 ms step changes its speed by ~0.14 m/s, 5e-4 N m its spin by ~0.85 rad/s.
DR = DRTable(object_bodies=("cube",), object_geoms=("cube",), push_force=0.2, push_torque=5e-4)


@dataclass
class ReorientTask(Task):
    """Cube reorientation with goals that resample on success.

    Attributes:
        episode_steps: control steps per episode (20 Hz).
        success_tolerance: cube-goal angle (rad) that counts as reaching the goal.
        goal_angle: a new goal is the cube turned by U(low, high) rad about a random axis;
            low must exceed success_tolerance so that a new goal is never reached at once.
        fall_drop: the episode fails when the cube is this far (m) below its resting height.
        joint_noise: half-width (rad) of the uniform noise on the initial joint angles.
        cube_pos_noise: half-width (m) of the uniform noise on the cube's spawn x and y.
    """

    episode_steps: int = 200
    success_tolerance: float = 0.4
    goal_angle: tuple[float, float] = (math.pi / 4, math.pi)
    fall_drop: float = 0.24
    joint_noise: float = 0.1
    cube_pos_noise: float = 0.01

    name = "shadow_hand-reorient"
    robot = SPEC
    obs_layout = OBS_LAYOUT
    reward_scales = REWARD_SCALES
    noisy_readings = {"joint_pos": 0.01, "distal_joint_pos": 0.01, "cube_pos": 0.002, "cube_quat": 0.01}

    def __post_init__(self) -> None:
        if self.episode_steps < 1:
            raise ValueError(f"episode_steps must be >= 1, got {self.episode_steps}")
        if not 0 < self.success_tolerance < math.pi:
            raise ValueError(f"success_tolerance must lie in (0, pi) rad, got {self.success_tolerance}")
        lo, hi = self.goal_angle
        if not self.success_tolerance < lo <= hi <= math.pi:
            raise ValueError(f"goal_angle must satisfy success_tolerance ({self.success_tolerance}) < low <= high"
                             f" <= pi, got {self.goal_angle}: a goal within the tolerance counts as reached at once")
        if not self.fall_drop > 0:
            raise ValueError(f"fall_drop must be > 0 m, got {self.fall_drop}")
        if not 0 <= self.joint_noise <= 0.1:
            raise ValueError(f"joint_noise must lie in [0, 0.1] rad (the cube spawns clear of the palm only for "
                             f"wrist offsets up to 0.1 rad), got {self.joint_noise}")
        if not 0 <= self.cube_pos_noise <= 0.02:
            raise ValueError(f"cube_pos_noise must lie in [0, 0.02] m (the cube must land on the palm), "
                             f"got {self.cube_pos_noise}")

    @property
    def critic_obs_layout(self) -> ObsLayout:
        return CRITIC_OBS_LAYOUT

    # --- simulation side -------------------------------------------------------------
    def build_model(self):
        from robots.shadow_hand.scene import build_scene

        return build_scene()

    def bind(self, model) -> None:
        import mujoco

        def joint(name: str) -> int:
            index = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
            if index < 0:
                raise ValueError(f"model has no joint '{name}' required by task '{self.name}'")
            return index

        indices = bind_robot(model, self.robot, tuple(MODEL_PREFIX + n for n in JOINT_NAMES))
        hand = [joint(MODEL_PREFIX + n) for n in ALL_JOINT_NAMES]
        distal = [joint(MODEL_PREFIX + n) for n in COUPLED_JOINTS]
        # The distal joints move with their actuated neighbours: randomize their damping too.
        self.indices = replace(indices, dof_ids=model.jnt_dofadr[hand].copy())
        self._qpos_adr = indices.qpos_adr
        self._actuators = indices.actuator_ids
        self._hand_dofs = model.jnt_dofadr[hand].copy()
        self._distal_adr = model.jnt_qposadr[distal].copy()
        self._distal_range = model.jnt_range[distal].copy()
        self._driver_cols = np.array([JOINT_NAMES.index(driver) for driver in COUPLED_JOINTS.values()])
        cube = joint("cube")
        if model.jnt_type[cube] != mujoco.mjtJoint.mjJNT_FREE:
            raise ValueError("the cube's joint must be a free joint")
        self._cube_qpos = int(model.jnt_qposadr[cube]) + np.arange(7)
        self._cube_dof = int(model.jnt_dofadr[cube]) + np.arange(6)
        self._tips = np.array([mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, s) for s in FINGERTIP_SITES])
        if np.any(self._tips < 0):
            raise ValueError(f"model lacks fingertip sites {FINGERTIP_SITES}")
        self._goal_mocap = int(model.body_mocapid[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "goal")])

    def read(self, sim) -> dict:
        qpos = sim.qpos
        cube = _take(qpos, self._cube_qpos)
        return {
            "joint_pos": _take(qpos, self._qpos_adr),
            "distal_joint_pos": _take(qpos, self._distal_adr),
            "joint_vel": _take(sim.qvel, self._hand_dofs),
            "cube_pos": cube[:, :3],
            "cube_quat": cube[:, 3:],
        }

    def privileged(self, sim) -> dict:
        xp = array_namespace(sim.qvel)
        velocity = _take(sim.qvel, self._cube_dof)
        tips = _take(sim.data_field("site_xpos"), self._tips)
        return {
            "cube_linvel": velocity[:, :3],
            "cube_angvel": velocity[:, 3:],
            "fingertip_pos": xp.reshape(tips, (tips.shape[0], 3 * len(FINGERTIP_SITES))),
        }

    def write_reset(self, sim, ids, rand) -> dict:
        xp = array_namespace(sim.qpos)
        k = ids.shape[0]
        like = dict(dtype=sim.qpos.dtype, device=sim.qpos.device)

        def uniform(shape):  # rand is float64; mujoco-warp's state is float32
            return xp.astype(rand(shape), sim.qpos.dtype)

        def const(value):
            return constant_like(value, sim.qpos)

        def index(value):
            return xp.asarray(value, device=sim.qpos.device)

        joints = xp.clip(const(self.robot.default_pose) + self.joint_noise * (2 * uniform((k, 20)) - 1),
                         const(self.robot.joint_low), const(self.robot.joint_high))
        # Start the distal joints where their coupling tendon holds them: no initial jerk.
        distal = xp.clip(COUPLING_RATIO * joints[:, index(self._driver_cols)],
                         const(self._distal_range[:, 0]), const(self._distal_range[:, 1]))
        offset = self.cube_pos_noise * (2 * uniform((k, 2)) - 1)
        cube_pos = const(CUBE_START) + xp.concat([offset, xp.zeros((k, 1), **like)], axis=-1)
        cube_quat = _resting_orientations(uniform((k, 2)))
        goal = self._turned_goals(cube_quat, *self._goal_draws(k, uniform))
        rows = ids[:, None]
        sim.qpos[rows, index(self._qpos_adr)] = joints
        sim.qpos[rows, index(self._distal_adr)] = distal
        sim.qpos[rows, index(self._cube_qpos)] = xp.concat([cube_pos, cube_quat], axis=-1)
        sim.qvel[ids] = 0.0
        sim.ctrl[rows, index(self._actuators)] = joints
        # The goal marker is visual only; it shows the episode's first goal (module docstring).
        sim.mocap_quat[ids, self._goal_mocap] = goal
        return {"goal_quat": goal, "successes": xp.zeros(k, **like)}

    pose_readings = ("joint_pos", "distal_joint_pos", "cube_pos", "cube_quat")

    def show(self, sim, readings, task_state) -> None:
        xp = array_namespace(sim.qpos)

        def index(value):
            return xp.asarray(value, device=sim.qpos.device)

        sim.qpos[:, index(self._qpos_adr)] = readings["joint_pos"]
        sim.qpos[:, index(self._distal_adr)] = readings["distal_joint_pos"]
        sim.qpos[:, index(self._cube_qpos)] = xp.concat([readings["cube_pos"], readings["cube_quat"]], axis=-1)
        sim.mocap_quat[:, self._goal_mocap] = xp.astype(task_state["goal_quat"], sim.mocap_quat.dtype)

    def dr_table(self) -> DRTable:
        return DR

    # --- shared with deployment ------------------------------------------------------
    def _goal_draws(self, n: int, rand):
        """The uniform numbers of ``n`` new goals: axis (n, 2) and angle (n,)."""
        return rand((n, 2)), rand((n,))

    def _turned_goals(self, cube_quat, axis_u, angle_u):
        """Goals (n, 4): ``cube_quat`` (n, 4) turned by U(goal_angle) about random axes."""
        xp = array_namespace(cube_quat)
        lo, hi = self.goal_angle
        turn = quat_from_axis_angle(axis_from_uniform(axis_u), lo + (hi - lo) * angle_u)
        return quat_canonical(quat_mul(turn, xp.astype(cube_quat, turn.dtype)))

    def _actor_parts(self, readings, task_state, joint_targets, last_action) -> dict:
        # A tracker reports unit quaternions; observation noise (DR) does not keep them unit.
        cube, goal = quat_normalize(readings["cube_quat"]), task_state["goal_quat"]
        return {
            "joint_pos": readings["joint_pos"],
            "distal_joint_pos": readings["distal_joint_pos"],
            "joint_targets": joint_targets,
            "cube_pos": readings["cube_pos"] - constant_like(CUBE_HOLD_POS, readings["cube_pos"]),
            "cube_quat": quat_canonical(cube),
            "goal_quat": quat_canonical(goal),
            "goal_rel_quat": quat_canonical(quat_mul(cube, quat_conjugate(goal))),
            "last_action": last_action,
        }

    def observe(self, readings, task_state, joint_targets, last_action):
        xp = array_namespace(readings["joint_pos"])
        return OBS_LAYOUT.concat(self._actor_parts(readings, task_state, joint_targets, last_action), xp)

    def critic_observe(self, readings, task_state, joint_targets, last_action, privileged):
        xp = array_namespace(readings["joint_pos"])
        cube_pos = readings["cube_pos"]
        n = cube_pos.shape[0]
        tips = xp.reshape(privileged["fingertip_pos"], (n, -1, 3)) - cube_pos[:, None, :]
        parts = self._actor_parts(readings, task_state, joint_targets, last_action)
        parts.update(
            joint_vel=readings["joint_vel"],
            cube_linvel=privileged["cube_linvel"],
            cube_angvel=privileged["cube_angvel"],
            fingertip_pos=xp.reshape(tips, (n, -1)),
            # The angle of goal_rel_quat (|w| and |xyz| scale alike: normalizing leaves it).
            rotation_error=quat_angle(parts["goal_rel_quat"]),
        )
        return CRITIC_OBS_LAYOUT.concat(parts, xp)

    def reward_terms(self, readings, task_state, action, joint_targets) -> dict:
        xp = array_namespace(readings["cube_pos"])
        cube_pos = readings["cube_pos"]
        theta = self._rotation_error(readings, task_state)
        fallen = self.terminated(readings, task_state)
        return {
            "distance": xp.linalg.vector_norm(cube_pos - constant_like(CUBE_HOLD_POS, cube_pos), axis=-1),
            "rotation": 1.0 / (theta + ROTATION_EPS),
            "action": xp.sum(action * action, axis=-1),
            "success": xp.astype(self._reached(theta, fallen), theta.dtype),
            "fall": xp.astype(fallen, theta.dtype),
        }

    def success(self, readings, task_state):
        return self._reached(self._rotation_error(readings, task_state), self.terminated(readings, task_state))

    def terminated(self, readings, task_state):
        return readings["cube_pos"][:, 2] < CUBE_HOLD_POS[2] - self.fall_drop

    def _rotation_error(self, readings, task_state):
        """Cube-goal angle theta (n,) in [0, pi] rad."""
        return quat_distance(readings["cube_quat"], task_state["goal_quat"])

    def _reached(self, theta, fallen):
        # A cube that is falling through the goal orientation has not been reoriented.
        return (theta < self.success_tolerance) & ~fallen

    def update_goals(self, readings, task_state, success, rand):
        """Draw a new goal where ``success`` (n,) and count it in ``task_state["successes"]``."""
        xp = array_namespace(readings["cube_quat"])
        cube = readings["cube_quat"]
        # Every env's stream advances by the same draws whatever the others do; the quaternion
        # work is skipped on the (most) steps where no env reached its goal.
        draws = self._goal_draws(cube.shape[0], rand)
        if bool(xp.any(success)):
            fresh = self._turned_goals(cube, *draws)
            goal = task_state["goal_quat"]
            task_state["goal_quat"] = xp.where(success[:, None], xp.astype(fresh, goal.dtype), goal)
        successes = task_state["successes"]
        task_state["successes"] = successes + xp.astype(success, successes.dtype)
        return success

    metric_names = ("consecutive_successes",)

    def episode_metrics(self, task_state) -> dict:
        return {"consecutive_successes": task_state["successes"]}


#: Rotations that put each of the cube's faces down: +z, -z, +y, -y, -x, +x of the cube up.
_FACE_UP = np.array([
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [math.sqrt(0.5), math.sqrt(0.5), 0.0, 0.0],
    [math.sqrt(0.5), -math.sqrt(0.5), 0.0, 0.0],
    [math.sqrt(0.5), 0.0, math.sqrt(0.5), 0.0],
    [math.sqrt(0.5), 0.0, -math.sqrt(0.5), 0.0],
])


def _resting_orientations(u):
    """Orientations of a cube lying on a face, (n, 4), from uniform samples ``u`` (n, 2):
    a random face up, turned about the vertical by U(0, 2 pi). Every resting orientation is
    reachable and none needs to tumble into place (a cube dropped on an edge or a corner
    often rolls off the open palm)."""
    xp = array_namespace(u)
    face = xp.astype(xp.clip(xp.floor(6 * u[:, 0]), 0, 5), xp.int64)
    face_up = xp.take(constant_like(_FACE_UP, u), face, axis=0)
    yaw = quat_from_axis_angle(constant_like(np.array([0.0, 0.0, 1.0]), u), 2 * math.pi * u[:, 1])
    return quat_canonical(quat_mul(yaw, face_up))


def _take(array, columns: np.ndarray):
    """``array[:, columns]`` as ``take`` (torch: index_select). Torch's advanced indexing runs
    >= 16 indices on its intra-op thread pool, which stalls for ~15 ms per call when the CPU
    cores are busy (the physics threads, other processes)."""
    xp = array_namespace(array)
    return xp.take(array, xp.asarray(columns, device=array.device), axis=1)

