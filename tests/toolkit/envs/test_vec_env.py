"""VecEnv behaviour on the D'Claw turn task: gymnasium conventions, autoreset, bad input,
and unstable physics (NaN) handling."""

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from robots import make_task
from toolkit.config import EnvConfig
from toolkit.envs.vec_env import VecEnv

N = 3


def make_env(num_envs=N, episode_steps=40, **cfg) -> VecEnv:
    return VecEnv(make_task("dclaw-turn", episode_steps=episode_steps),
                  EnvConfig(num_envs=num_envs, nthread=1, **cfg))


@pytest.fixture
def env():
    return make_env()


def test_is_a_gymnasium_vector_env(env):
    assert isinstance(env, gymnasium.vector.VectorEnv)
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert isinstance(env.single_observation_space, gymnasium.spaces.Box)
    assert env.action_space.shape == (N, 9) and env.single_action_space.shape == (9,)
    # The batched action space samples valid actions.
    env.action_space.seed(0)
    env.step(env.action_space.sample())
    env.close()
    env.close()  # closing twice is allowed


def test_autoreset_same_step():
    env = make_env(episode_steps=3)
    layout = env.task.obs_layout.slices()
    default = torch.as_tensor(env.task.robot.default_pose, dtype=torch.float32)
    action = torch.ones(N, 9) * 0.5
    for t in range(3):
        obs, reward, terminated, truncated, info = env.step(action)
        if t < 2:
            assert not truncated.any() and not info["done"].any() and "episode_return" not in info
            torch.testing.assert_close(info["final_obs"], obs)
    assert truncated.all() and not terminated.any() and info["_final_obs"].all()
    assert info["episode_length"].tolist() == [3] * N
    assert torch.isfinite(info["episode_return"]).all()
    assert info["success_rate"] == pytest.approx(float(info["episode_success"].double().mean()))
    final, fresh = info["final_obs"], obs
    # The final observation is the ended episode's: its targets moved by 3 * 0.5 * scale.
    assert not torch.allclose(final[:, layout["joint_targets"]], default.expand(N, 9))
    # The returned observation is the new episode's: targets back at the default pose, no last action.
    torch.testing.assert_close(fresh[:, layout["joint_targets"]], default.expand(N, 9))
    assert (fresh[:, layout["last_action"]] == 0).all()
    assert env.episode_step.tolist() == [0] * N
    *_, info = env.step(action)
    assert env.episode_step.tolist() == [1] * N and not info["done"].any()


def test_out_of_range_actions_are_clipped(env):
    obs, *_ = env.step(torch.full((N, 9), 25.0))
    last_action = obs[:, env.task.obs_layout.slices()["last_action"]]
    assert (last_action == 1.0).all()
    torch.testing.assert_close(env.last_action, torch.ones(N, 9, dtype=torch.float64))


def test_numpy_actions_are_accepted(env):
    obs, reward, *_ = env.step(np.zeros((N, 9), dtype=np.float32))
    assert obs.shape == (N, env.obs_size) and reward.shape == (N,)


@pytest.mark.parametrize("action, error, match", [
    (torch.zeros(N, 8), ValueError, r"action has shape \(3, 8\), expected \(3, 9\) \(num_envs, num_joints\)"),
    (torch.zeros(9), ValueError, r"add the env dimension"),
    (torch.zeros(N, 9, 1), ValueError, r"expected \(3, 9\)"),
    (torch.tensor([[0.0] * 9, [float("nan")] * 9, [0.0] * 9]), ValueError, r"NaN or inf \(envs \[1\]\).*finite"),
    (torch.tensor([[0.0] * 9, [0.0] * 9, [0.0] * 8 + [float("inf")]]), ValueError, r"NaN or inf \(envs \[2\]\)"),
    ([["a"] * 9] * N, TypeError, r"numeric array of shape \(3, 9\)"),
])
def test_bad_actions_raise_clear_errors(env, action, error, match):
    targets = env.joint_targets.clone()
    with pytest.raises(error, match=match):
        env.step(action)
    torch.testing.assert_close(env.joint_targets, targets, rtol=0, atol=0)  # nothing was applied


def test_bad_configuration_raises_clear_errors():
    with pytest.raises(ValueError, match=r"num_envs must be >= 1, got 0: set EnvConfig.num_envs"):
        make_env(num_envs=0)
    with pytest.raises(ValueError, match=r"unknown task 'dclaw-trun'. Did you mean 'dclaw-turn'\?"):
        make_task("dclaw-trun")
    with pytest.raises(ValueError, match=r"task 'dclaw-turn' has no setting\(s\) \['episode_len'\]"):
        make_task("dclaw-turn", episode_len=3)
    with pytest.raises(ValueError, match="unknown sim backend"):
        VecEnv(make_task("dclaw-turn"), EnvConfig(num_envs=1, sim="bullet"))
    env = make_env(num_envs=1)
    with pytest.raises(ValueError, match="takes no options"):
        env.reset(options={"ids": [0]})
    with pytest.raises(ValueError, match="one per env"):
        env.reset(seed=[1, 2])


@pytest.mark.parametrize("field", ["qpos", "qvel"])
def test_nan_in_physics_state_resets_the_env(env, field, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo writes MUJOCO_LOG.TXT into the working directory
    zero = torch.zeros(N, 9)
    env.step(zero)
    previous_obs, *_ = env.step(zero)
    getattr(env.sim, field)[1, 0] = float("nan")
    obs, reward, terminated, truncated, info = env.step(zero)
    assert info["nan_reset"].tolist() == [False, True, False]
    assert info["nan_resets"] == 1 and env.nan_resets == 1
    assert truncated.tolist() == [False, True, False] and not terminated.any()
    assert torch.isfinite(obs).all() and torch.isfinite(reward).all() and torch.isfinite(info["final_obs"]).all()
    assert reward[1] == 0 and all(float(term[1]) == 0 for term in info["reward_terms"].values())
    # The ended episode's final observation is its last finite one; env 1 started over.
    torch.testing.assert_close(info["final_obs"][1], previous_obs[1], rtol=0, atol=0)
    assert env.episode_step.tolist() == [3, 0, 3]
    assert torch.isfinite(env.sim.qpos).all() and torch.isfinite(env.sim.qvel).all()
    *_, info = env.step(zero)
    assert not info["nan_reset"].any() and info["nan_resets"] == 1


def test_nan_left_in_place_by_a_backend_is_caught(env):
    """A backend that does not reset unstable envs itself (and reports nothing) leaves NaN in
    qpos: the VecEnv's own finiteness check must catch it."""
    step = env.sim.step

    def step_to_nan(nstep):
        step(nstep)
        env.sim.qpos[2, 9] = float("nan")

    env.sim.step = step_to_nan
    env.sim.diverged = lambda: torch.zeros(N, dtype=torch.bool)
    obs, reward, _, truncated, info = env.step(torch.zeros(N, 9))
    assert info["nan_reset"].tolist() == [False, False, True] and truncated[2]
    assert torch.isfinite(obs).all() and torch.isfinite(reward).all()
    assert torch.isfinite(env.sim.qpos).all(), "the reset must replace the NaN state"


def test_success_rate_counts_finished_episodes():
    env = make_env(num_envs=2, episode_steps=1)
    assert np.isnan(env.success_rate)
    _, _, _, _, info = env.step(torch.zeros(2, 9))
    expected = float(info["episode_success"].double().mean())
    assert info["success_rate"] == pytest.approx(expected)
    env.reset()
    assert np.isnan(env.success_rate)
