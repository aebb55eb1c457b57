"""The D'Claw valve-turn task: reset distribution, success and reward on constructed states,
numpy/torch parity (training and deployment share the code), and scripted finger gaits that
turn the valve with the real physics."""

import math

import numpy as np
import pytest
import torch

from robots import make_task
from robots.dclaw.spec import DEFAULT_POSE, JOINT_HIGH, JOINT_LOW
from robots.dclaw.turn import REWARD_SCALES, SUCCESS_THRESHOLD, wrap_angle
from toolkit.config import EnvConfig
from toolkit.envs.vec_env import VecEnv

VALVE = 9  # qpos address of the valve hinge (after the nine finger joints)


def make_env(num_envs: int, episode_steps: int = 40, seed: int = 0) -> VecEnv:
    return VecEnv(make_task("dclaw-turn", episode_steps=episode_steps),
                  EnvConfig(num_envs=num_envs, nthread=1, seed=seed))


def goal_error(env: VecEnv) -> torch.Tensor:
    return wrap_angle(env.task_state["goal_angle"][:, 0] - env.sim.qpos[:, VALVE])


def test_reset_distribution():
    env = make_env(64)
    valve, goal = env.sim.qpos[:, VALVE], env.task_state["goal_angle"][:, 0]
    assert bool(((valve >= -math.pi) & (valve < math.pi)).all())
    offset = wrap_angle(goal - valve).abs()
    assert bool(((offset >= 0.3 - 1e-9) & (offset <= math.pi / 2 + 1e-9)).all())
    assert 10 < int((wrap_angle(goal - valve) > 0).sum()) < 54, "goals on both sides"
    joints = env.sim.qpos[:, :9]
    assert bool(((joints >= torch.as_tensor(JOINT_LOW)) & (joints <= torch.as_tensor(JOINT_HIGH))).all())
    assert bool(((joints - torch.as_tensor(DEFAULT_POSE)).abs() <= env.task.joint_noise + 1e-12).all())
    torch.testing.assert_close(env.joint_targets, torch.as_tensor(DEFAULT_POSE).expand(64, 9))
    # The goal marker shows the goal: a rotation of `goal` about z.
    quat = env.sim.mocap_quat[:, 0]
    torch.testing.assert_close(2 * torch.atan2(quat[:, 3], quat[:, 0]), goal)
    # Observation fields are the readings they name.
    obs, slices = env._obs, env.task.obs_layout.slices()
    torch.testing.assert_close(obs[:, slices["joint_pos"]], joints.float())
    torch.testing.assert_close(obs[:, slices["valve_sincos"]], torch.stack([valve.sin(), valve.cos()], 1).float())
    torch.testing.assert_close(obs[:, slices["goal_error"]][:, 0], wrap_angle(goal - valve).float())


def test_success_and_reward_terms_on_constructed_states():
    env = make_env(5)
    goal = env.task_state["goal_angle"][:, 0]
    goal[4] = math.pi - 0.02  # across the +-pi seam from the valve below
    offsets = torch.tensor([0.05, -0.05, 0.2, -0.3, 0.0], dtype=torch.float64)
    env.sim.qpos[:, VALVE] = goal + offsets
    env.sim.qpos[4, VALVE] = -math.pi + 0.03  # 0.05 rad from the goal, the short way round
    env.sim.qvel[:] = 0.0
    env.sim.forward(torch.arange(5))
    readings = env.task.read(env.sim)
    success = env.task.success(readings, env.task_state)
    assert success.tolist() == [True, True, False, False, True]
    terms = env.task.reward_terms(readings, env.task_state, torch.zeros(5, 9), env.joint_targets)
    torch.testing.assert_close(terms["goal_distance"], torch.tensor([0.05, 0.05, 0.2, 0.3, 0.05], dtype=torch.float64))
    assert terms["at_goal"].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert terms["near_goal"].tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert SUCCESS_THRESHOLD == 0.1

    # Through a real step (fingers raised, no action: the valve stays where it was put).
    _, reward, _, _, info = env.step(torch.zeros(5, 9))
    assert info["success"].tolist() == [True, True, False, False, True]
    scaled = info["reward_terms"]
    torch.testing.assert_close(scaled["at_goal"], REWARD_SCALES["at_goal"] * terms["at_goal"])
    assert bool((reward[[0, 1, 4]] > reward[2] + 40).all()) and bool(reward[2] > reward[3])


def test_numpy_and_torch_compute_the_same_observation_and_reward():
    env = make_env(4)
    env.step(torch.rand(4, 9, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    task = env.task
    readings = task.read(env.sim)
    action = env.last_action
    as_np = {name: value.numpy().copy() for name, value in readings.items()}
    state_np = {name: value.numpy().copy() for name, value in env.task_state.items()}
    targets_np, action_np = env.joint_targets.numpy().copy(), action.numpy().copy()
    np.testing.assert_allclose(task.observe(as_np, state_np, targets_np, action_np),
                               task.observe(readings, env.task_state, env.joint_targets, action).numpy(), atol=1e-12)
    terms_t = task.reward_terms(readings, env.task_state, action, env.joint_targets)
    terms_np = task.reward_terms(as_np, state_np, action_np, targets_np)
    for name in REWARD_SCALES:
        np.testing.assert_allclose(terms_np[name], terms_t[name].numpy(), atol=1e-12)
    np.testing.assert_array_equal(task.success(as_np, state_np), task.success(readings, env.task_state).numpy())


# Finger gait: raise the fingers, swing the base joints to one side, lower the tips into the
# spokes, swing across (pushing the spokes round), raise, repeat. Rows: (base sign, middle, tip).
RAISED, LOWERED, SWING = (-0.5, 0.5), (0.1, 0.0), 0.45
GAIT = [(-1, *RAISED), (-1, *LOWERED), (1, *LOWERED), (1, *RAISED)]


def gait_targets(phase: int, direction: torch.Tensor, swing: float | torch.Tensor = SWING) -> torch.Tensor:
    """Joint targets (n, 9) of a gait phase; direction (n,) +1 turns the valve counter-clockwise;
    swing: base-joint amplitude (rad), scalar or (n,)."""
    sign, middle, tip = GAIT[phase]
    targets = torch.tensor([0.0, middle, tip] * 3, dtype=torch.float64).repeat(len(direction), 1)
    targets[:, 0::3] = (sign * swing * direction)[:, None]
    return targets


def track(env: VecEnv, targets: torch.Tensor) -> torch.Tensor:
    """The relative action that moves the joint targets toward ``targets`` as fast as allowed."""
    return ((targets - env.joint_targets) / env.action_scale).clamp(-1.0, 1.0)


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_open_loop_gait_turns_the_valve(direction):
    env = make_env(4, episode_steps=100)
    start = env.sim.qpos[:, VALVE].clone()
    directions = torch.full((4,), direction)
    phase = 0
    for _ in range(45):
        targets = gait_targets(phase, directions)
        if bool(((targets - env.joint_targets).abs() < 0.03).all()):  # phase reached: next one
            phase = (phase + 1) % len(GAIT)
            targets = gait_targets(phase, directions)
        env.step(track(env, targets))
    turned = direction * (env.sim.qpos[:, VALVE] - start)
    assert bool((turned > 0.5).all()), f"valve turned {turned.tolist()} rad in the commanded direction"


def test_feedback_gait_reaches_the_goal_and_the_reward_rises():
    n = 8
    env = make_env(n, episode_steps=41)
    initial_error = goal_error(env).abs().clone()
    rewards, ever_success = [], torch.zeros(n, dtype=torch.bool)
    phase = 0
    for _ in range(40):
        error = goal_error(env)
        arrived = error.abs() < 0.05
        swing = (0.15 + 0.4 * error.abs()).clamp(max=SWING)  # shorter strokes near the goal
        targets = gait_targets(phase, torch.sign(error), swing)
        if bool(((targets - env.joint_targets).abs() < 0.03)[~arrived].all()):
            phase = (phase + 1) % len(GAIT)
            targets = gait_targets(phase, torch.sign(error), swing)
        # Envs at their goal lift their fingers off the valve and wait.
        targets[arrived] = torch.tensor([0.0, *RAISED] * 3, dtype=torch.float64)
        _, reward, _, _, info = env.step(track(env, targets))
        rewards.append(reward)
        ever_success |= info["success"]
    final_error = goal_error(env).abs()
    assert float(final_error.mean()) < 0.5 * float(initial_error.mean()), (initial_error, final_error)
    assert int(ever_success.sum()) >= n // 2
    rewards = torch.stack(rewards)
    assert float(rewards[-5:].mean()) > float(rewards[:5].mean()) + 10.0
