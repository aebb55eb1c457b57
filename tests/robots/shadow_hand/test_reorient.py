"""The Shadow Hand reorientation task: observations, goals, falls, rewards, DR, config."""

import math

import mujoco
import numpy as np
import pytest
import torch

from robots import TASKS, make_task
from robots.shadow_hand.reorient import CRITIC_OBS_LAYOUT, DR, OBS_LAYOUT, REWARD_SCALES, ReorientTask
from robots.shadow_hand.scene import ARENA_BYTES, CUBE_HALF_SIZE, CUBE_HOLD_POS, CUBE_START, NCONMAX, NJMAX
from robots.shadow_hand.spec import COUPLING_RATIO, DEFAULT_POSE
from toolkit.config import EnvConfig
from toolkit.envs.vec_env import VecEnv
from toolkit.rotations import quat_distance, quat_from_axis_angle

NAME = "shadow_hand-reorient"


def make_env(num_envs=4, randomize=False, **task_settings) -> VecEnv:
    task = make_task(NAME, **task_settings)
    return VecEnv(task, EnvConfig(task=NAME, num_envs=num_envs, randomize=randomize, nthread=1))


def readings(n=3, cube_pos=None, cube_quat=None) -> dict:
    """Numpy readings (what the deployment side passes) of n envs, cube at rest by default."""
    identity = np.tile([1.0, 0.0, 0.0, 0.0], (n, 1))
    return {
        "joint_pos": np.zeros((n, 20)),
        "distal_joint_pos": np.zeros((n, 4)),
        "joint_vel": np.zeros((n, 24)),
        "cube_pos": np.tile(CUBE_HOLD_POS, (n, 1)) if cube_pos is None else cube_pos,
        "cube_quat": identity if cube_quat is None else cube_quat,
    }


def about_z(angles) -> np.ndarray:
    angles = np.asarray(angles, dtype=np.float64)
    return quat_from_axis_angle(np.array([0.0, 0.0, 1.0]), angles)


def test_registered_and_asymmetric():
    assert TASKS[NAME] == "robots.shadow_hand.reorient:ReorientTask"
    task = make_task(NAME)
    assert isinstance(task, ReorientTask) and task.asymmetric
    assert OBS_LAYOUT.size == 79 and CRITIC_OBS_LAYOUT.size == 125
    assert CRITIC_OBS_LAYOUT.fields[:len(OBS_LAYOUT.fields)] == OBS_LAYOUT.fields
    assert set(task.reward_terms(readings(), {"goal_quat": about_z([1.0] * 3)}, np.zeros((3, 20)),
                                 np.zeros((3, 20)))) == set(REWARD_SCALES)


@pytest.mark.parametrize("randomize", [False, True])
def test_actor_and_critic_observations(randomize):
    env = make_env(randomize=randomize)
    obs, info = env.reset(seed=3)
    assert obs.shape == (4, 79) and obs.dtype == torch.float32
    assert info["critic_obs"].shape == (4, 125) and info["critic_obs"].dtype == torch.float32
    action = torch.linspace(-1, 1, 20).repeat(4, 1)
    obs, reward, terminated, truncated, info = env.step(action)
    critic = info["critic_obs"]
    assert obs.shape == (4, 79) and critic.shape == (4, 125) and info["final_critic_obs"].shape == (4, 125)
    assert reward.dtype == torch.float32 and terminated.dtype == torch.bool
    assert torch.isfinite(obs).all() and torch.isfinite(critic).all()
    actor, privileged = OBS_LAYOUT.slices(), CRITIC_OBS_LAYOUT.slices()
    if not randomize:  # DR observation noise reaches the actor only
        torch.testing.assert_close(critic[:, :79], obs)
    torch.testing.assert_close(obs[:, actor["last_action"]], action)
    torch.testing.assert_close(obs[:, actor["joint_targets"]], env.joint_targets.float())
    for field in ("cube_quat", "goal_quat", "goal_rel_quat"):
        quat = obs[:, actor[field]]
        assert (quat[:, 0] >= 0).all()
        torch.testing.assert_close(quat.norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)
    state = env.task.read(env.sim)
    theta = quat_distance(state["cube_quat"], env.task_state["goal_quat"]).float()
    torch.testing.assert_close(critic[:, privileged["rotation_error"]][:, 0], theta, atol=1e-5, rtol=1e-5)
    # Fingertips are within a hand's reach of the cube.
    assert critic[:, privileged["fingertip_pos"]].abs().max() < 0.25


def test_numpy_and_torch_compute_the_same():
    env = make_env()
    env.step(0.5 * torch.ones(4, 20))
    task = env.task
    state = task.read(env.sim)
    extra = task.privileged(env.sim)
    args = (env.joint_targets, env.last_action)

    def np_(d):
        return {k: v.numpy().copy() for k, v in d.items()}

    np_args = tuple(a.numpy() for a in args)
    np_targets, np_action = np_args
    torch_obs = task.critic_observe(state, env.task_state, *args, extra).numpy()
    numpy_obs = task.critic_observe(np_(state), np_(env.task_state), *np_args, np_(extra))
    assert isinstance(numpy_obs, np.ndarray)
    np.testing.assert_allclose(numpy_obs, torch_obs, atol=1e-12)
    np.testing.assert_allclose(task.observe(np_(state), np_(env.task_state), *np_args),
                               task.observe(state, env.task_state, *args).numpy(), atol=1e-12)
    torch_terms = task.reward_terms(state, env.task_state, env.last_action, env.joint_targets)
    numpy_terms = task.reward_terms(np_(state), np_(env.task_state), np_action, np_targets)
    for name, value in torch_terms.items():
        np.testing.assert_allclose(numpy_terms[name], value.numpy(), atol=1e-12)


def test_goal_resamples_on_success_and_counts_consecutive_successes():
    env = make_env(episode_steps=3)
    env.reset(seed=0)
    zero = torch.zeros(4, 20)
    env.step(zero)  # let the cube settle for one step
    cube = env.task.read(env.sim)["cube_quat"]
    env.task_state["goal_quat"][0] = cube[0]  # env 0 holds the cube at its goal
    goals_before = env.task_state["goal_quat"].clone()
    _, reward, _, _, info = env.step(zero)
    assert info["success"].tolist() == [True, False, False, False]
    assert info["reward_terms"]["success"].tolist() == [250.0, 0.0, 0.0, 0.0]
    goals = env.task_state["goal_quat"]
    torch.testing.assert_close(goals[1:], goals_before[1:])
    cube = env.task.read(env.sim)["cube_quat"]
    lo, hi = env.task.goal_angle
    assert lo - 1e-9 <= float(quat_distance(goals[0], cube[0])) <= hi + 1e-9
    assert env.task_state["successes"].tolist() == [1.0, 0.0, 0.0, 0.0]
    _, _, terminated, truncated, info = env.step(zero)  # the new goal is far: no success
    assert not info["success"].any()
    assert truncated.all() and not terminated.any()
    assert info["episode_metrics"]["consecutive_successes"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert env.task_state["successes"].tolist() == [0.0] * 4  # reset with the new episode


def test_update_goals_on_numpy():
    task = ReorientTask(goal_angle=(1.0, 2.0))
    cube = np.stack([about_z(0.3), about_z(-2.0), quat_from_axis_angle(np.array([0.6, 0.0, 0.8]), np.array(1.0))])
    goal = about_z([0.2, 0.2, 0.2])
    state = {"goal_quat": goal.copy(), "successes": np.array([2.0, 0.0, 5.0])}
    rng = np.random.default_rng(0)
    success = np.array([True, False, True])
    changed = task.update_goals(readings(cube_quat=cube), state, success, lambda shape: rng.random(shape))
    np.testing.assert_array_equal(changed, success)
    np.testing.assert_array_equal(state["successes"], [3.0, 0.0, 6.0])
    np.testing.assert_array_equal(state["goal_quat"][1], goal[1])
    angles = quat_distance(state["goal_quat"], cube)[success]
    assert np.all((angles >= 1.0 - 1e-9) & (angles <= 2.0 + 1e-9))
    assert np.all(state["goal_quat"][:, 0] >= 0)


def test_a_dropped_cube_terminates_the_episode():
    env = make_env()
    env.reset(seed=1)
    cube_z = env.task._cube_qpos[2]
    env.sim.qpos[1, cube_z] = CUBE_HOLD_POS[2] - 0.3
    env.sim.forward(torch.tensor([1]))
    obs, _, terminated, truncated, info = env.step(torch.zeros(4, 20))
    assert terminated.tolist() == [False, True, False, False] and not truncated.any()
    assert info["reward_terms"]["fall"].tolist() == [0.0, REWARD_SCALES["fall"], 0.0, 0.0]
    assert not info["success"][1]
    # The final observation is the fallen cube's; the returned one starts a new episode.
    cube_pos = OBS_LAYOUT.slices()["cube_pos"]
    assert info["final_obs"][1, cube_pos][2] < -0.24
    assert abs(float(obs[1, cube_pos][2]) - (CUBE_START[2] - CUBE_HOLD_POS[2])) < 1e-6


def test_fall_threshold_and_reward_terms_on_numpy():
    task = ReorientTask(success_tolerance=0.2)
    z = CUBE_HOLD_POS[2] - np.array([0.0, 0.2399, 0.2401])
    cube_pos = np.tile(CUBE_HOLD_POS, (3, 1))
    cube_pos[:, 2] = z
    cube_pos[0, 0] += 0.03
    state = {"goal_quat": about_z([0.5, 0.1, 0.1])}
    r = readings(cube_pos=cube_pos)
    np.testing.assert_array_equal(task.terminated(r, state), [False, False, True])
    # Env 2 is at its goal orientation but falling: not a success.
    np.testing.assert_array_equal(task.success(r, state), [False, True, False])
    action = np.full((3, 20), 0.5)
    terms = task.reward_terms(r, state, action, np.zeros((3, 20)))
    np.testing.assert_allclose(terms["distance"], [0.03, 0.2399, 0.2401])
    np.testing.assert_allclose(terms["rotation"], [1 / 0.6, 1 / 0.2, 1 / 0.2])
    np.testing.assert_allclose(terms["action"], [5.0] * 3)
    np.testing.assert_array_equal(terms["success"], [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(terms["fall"], [0.0, 0.0, 1.0])


def test_reset_state():
    env = make_env(num_envs=32)
    env.reset(seed=2)
    task, state = env.task, env.task.read(env.sim)
    joints = state["joint_pos"]
    assert (joints - torch.as_tensor(DEFAULT_POSE)).abs().max() <= task.joint_noise + 1e-12
    torch.testing.assert_close(env.joint_targets, joints)
    torch.testing.assert_close(state["distal_joint_pos"],
                               (COUPLING_RATIO * joints[:, [4, 7, 10, 14]]).clamp(0.0, 1.571))
    offset = state["cube_pos"] - torch.as_tensor(CUBE_START)
    assert offset[:, :2].abs().max() <= task.cube_pos_noise and offset[:, 2].abs().max() < 1e-12
    # The cube lies on a face: world z is one of its axes; and every face comes up.
    up_axes = set()
    for quat in state["cube_quat"].numpy():
        up = np.zeros(3)
        mujoco.mju_rotVecQuat(up, np.array([0.0, 0.0, 1.0]), quat * np.array([1, -1, -1, -1]))
        axis = int(np.argmax(np.abs(up)))
        assert abs(up[axis]) == pytest.approx(1.0, abs=1e-9)
        up_axes.add((axis, int(np.sign(up[axis]))))
    assert len(up_axes) == 6
    lo, hi = task.goal_angle
    theta = quat_distance(state["cube_quat"], env.task_state["goal_quat"])
    assert ((theta >= lo - 1e-9) & (theta <= hi + 1e-9)).all()
    assert env.task_state["successes"].eq(0).all()
    goal_marker = env.sim.mocap_quat[:, task._goal_mocap]
    torch.testing.assert_close(goal_marker, env.task_state["goal_quat"])


def test_cube_stays_on_the_palm_without_actions():
    env = make_env(num_envs=16)
    env.reset(seed=4)
    for _ in range(30):
        _, _, terminated, _, _ = env.step(torch.zeros(16, 20))
        assert not terminated.any()
    cube_pos = env.task.read(env.sim)["cube_pos"]
    assert (cube_pos - torch.as_tensor(CUBE_HOLD_POS)).norm(dim=1).max() < 0.03


def test_domain_randomization():
    assert (DR.joint_damping, DR.actuator_gain, DR.friction, DR.mass, DR.object_scale) == (
        (0.3, 3.0), (0.75, 1.5), (0.7, 1.3), (0.5, 1.5), (0.95, 1.05))
    assert (DR.gravity_std, DR.action_noise_std, DR.max_action_latency) == (0.4, 0.05, 1)
    assert DR.object_bodies == ("cube",) and DR.object_geoms == ("cube",)
    env = make_env(num_envs=16, randomize=True)
    values = env.dr.values
    assert values["joint_damping"].shape == (16, 24)  # distal joints too
    for name, (lo, hi) in (("joint_damping", DR.joint_damping), ("actuator_gain", DR.actuator_gain),
                           ("friction", DR.friction), ("mass", DR.mass), ("object_scale", DR.object_scale)):
        assert lo <= float(values[name].min()) and float(values[name].max()) <= hi, name
    assert float(values["object_scale"].std()) > 0
    geom = env.model.geom("cube").id
    cube_size = env.sim.model_field("geom_size")[:, geom]
    torch.testing.assert_close(cube_size, CUBE_HALF_SIZE * values["object_scale"].expand(16, 3))


@pytest.mark.parametrize("settings, message", [
    ({"episode_steps": 0}, "episode_steps"),
    ({"success_tolerance": 0.0}, "success_tolerance"),
    ({"success_tolerance": math.pi}, "success_tolerance"),
    ({"goal_angle": (0.3, 2.0)}, "goal_angle"),  # low below the 0.4 rad tolerance
    ({"goal_angle": (1.0, 4.0)}, "goal_angle"),
    ({"goal_angle": (2.0, 1.0)}, "goal_angle"),
    ({"fall_drop": 0.0}, "fall_drop"),
    ({"joint_noise": 0.2}, "joint_noise"),
    ({"cube_pos_noise": -0.01}, "cube_pos_noise"),
])
def test_bad_settings_raise_clear_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        make_task(NAME, **settings)


def test_preallocated_sizes_cover_random_play():
    env = make_env(num_envs=8)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        env.step(2 * torch.rand(8, 20, generator=gen) - 1)
    data = [env.sim.get_data(i) for i in range(8)]
    assert max(d.maxuse_arena for d in data) < ARENA_BYTES / 4
    assert max(d.maxuse_con for d in data) < NCONMAX / 2
    assert max(d.maxuse_efc for d in data) < NJMAX / 1.5
