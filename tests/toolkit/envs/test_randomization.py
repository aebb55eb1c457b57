"""The per-step perturbations of domain randomization reach the simulated robot: action latency,
action noise, observation noise and pushes (the DR table's model parameters are checked over
every task in test_registered_tasks.py)."""

import dataclasses

import pytest
import torch

from robots import make_task
from toolkit.config import EnvConfig
from toolkit.envs.vec_env import VecEnv

N = 64


@pytest.fixture
def env():
    return VecEnv(make_task("dclaw-turn"), EnvConfig(task="dclaw-turn", num_envs=N, nthread=1, randomize=True, seed=4))


def _quiet(env, **table_changes):
    """The env's randomizer with some table entries changed (the table is read at every step)."""
    env.dr.table = dataclasses.replace(env.dr.table, **table_changes)
    return env


def test_latency_delays_the_applied_action_by_the_envs_steps(env):
    _quiet(env, action_noise_std=0.0)
    env.dr.values["action_latency"][:] = 0.0
    env.dr.values["action_latency"][: N // 2] = 1.0  # the first half one step late
    start = env.joint_targets.clone()
    first = torch.full((N, 9), 0.5, dtype=torch.float64)
    env.step(first)
    moved = env.joint_targets - start
    scale = env.action_scale
    # Steps 0: on time envs applied 0.5; late ones applied nothing yet (zero action at reset).
    torch.testing.assert_close(moved[N // 2:], (scale * 0.5).expand(N // 2, -1).clamp_max(
        env.joint_high - start[N // 2:]), atol=1e-12, rtol=0)
    torch.testing.assert_close(moved[: N // 2], torch.zeros(N // 2, 9, dtype=torch.float64))
    after_first = env.joint_targets.clone()
    env.step(torch.zeros(N, 9, dtype=torch.float64))
    # Step 1: the late envs now apply step 0's action; the on-time ones the zero action.
    late_move = (env.joint_targets - after_first)[: N // 2]
    expected = torch.minimum(after_first[: N // 2] + scale * 0.5, env.joint_high) - after_first[: N // 2]
    torch.testing.assert_close(late_move, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(env.joint_targets[N // 2:], after_first[N // 2:])


def test_action_noise_moves_targets_by_the_tables_std(env):
    env.dr.values["action_latency"][:] = 0.0
    start = env.joint_targets.clone()
    env.step(torch.zeros(N, 9, dtype=torch.float64))  # a zero action: every move is noise
    moved = (env.joint_targets - start) / env.action_scale
    inside = (env.joint_targets > env.joint_low) & (env.joint_targets < env.joint_high)
    noise = moved[inside]
    std = env.dr.table.action_noise_std
    assert noise.numel() > 300
    assert abs(float(noise.std()) - std) < 0.25 * std and abs(float(noise.mean())) < 0.25 * std

    quiet = _quiet(VecEnv(make_task("dclaw-turn"), EnvConfig(task="dclaw-turn", num_envs=N, nthread=1,
                                                             randomize=True, seed=4)), action_noise_std=0.0)
    quiet.dr.values["action_latency"][:] = 0.0
    before = quiet.joint_targets.clone()
    quiet.step(torch.zeros(N, 9, dtype=torch.float64))
    torch.testing.assert_close(quiet.joint_targets, before, rtol=0, atol=0)


def test_observation_noise_is_on_the_observed_readings_only(env):
    obs, *_ = env.step(torch.zeros(N, 9, dtype=torch.float64))
    joint_obs = obs[:, env.task.obs_layout.slices()["joint_pos"]].double()
    measured = env.task.read(env.sim)["joint_pos"]
    difference = joint_obs - measured
    std = env.task.noisy_readings["joint_pos"] * env.dr.table.obs_noise
    assert abs(float(difference.std()) - std) < 0.2 * std
    # The reward sees the true state: the same step without observation noise rewards alike.
    quiet = _quiet(VecEnv(make_task("dclaw-turn"), EnvConfig(task="dclaw-turn", num_envs=N, nthread=1,
                                                             randomize=True, seed=4)), obs_noise=0.0)
    obs_quiet, *_ = quiet.step(torch.zeros(N, 9, dtype=torch.float64))
    torch.testing.assert_close(obs_quiet[:, env.task.obs_layout.slices()["joint_pos"]].double(),
                               quiet.task.read(quiet.sim)["joint_pos"], atol=1e-6, rtol=0)


def test_pushes_apply_a_wrench_to_the_object_and_move_it():
    def valve_speed(probability: float) -> torch.Tensor:
        env = VecEnv(make_task("dclaw-turn"), EnvConfig(task="dclaw-turn", num_envs=N, nthread=1, randomize=True,
                                                         seed=4))
        _quiet(env, push_probability=probability, push_torque=0.5)
        env.step(torch.zeros(N, 9, dtype=torch.float64))
        body = env.dr._push_body
        wrench = env.sim.xfrc_applied[:, body]
        if probability == 0.0:
            assert not bool(wrench.any())
        else:
            assert bool((wrench[:, 3:].abs().sum(dim=1) > 0).all())  # every env pushed (probability 1)
        return env.task.read(env.sim)["joint_vel"], env.sim.qvel[:, env.task._valve_dof]

    _, calm = valve_speed(0.0)
    _, pushed = valve_speed(1.0)
    assert float((pushed - calm).abs().mean()) > 1e-3  # the pushes reached the valve's motion
