"""benchmarks.rsl_rl_adapter: our VecEnv seen through rsl_rl's VecEnv interface (shapes, dones,
time-outs on truncation, reward scale, episode-length buffer, asymmetric obs groups) and the
deterministic PPO policy used for evaluation."""

import contextlib
import io
from dataclasses import dataclass

import pytest
import torch
from array_api_compat import array_namespace
from rsl_rl.runners import OnPolicyRunner
from tensordict import TensorDict

from benchmarks.pql_vs_ppo import Args, ppo_train_config
from benchmarks.rsl_rl_adapter import DeterministicPolicy, RslRlVecEnv
from robots import make_task
from robots.dclaw.pose import PoseTask
from tests.export.asym_task import AsymmetricTurnTask
from toolkit.config import EnvConfig
from toolkit.envs.vec_env import VecEnv


@dataclass
class FirstEnvFailsPose(PoseTask):
    """dclaw-pose where env 0 terminates (fails) on every step; the others only truncate."""

    def terminated(self, readings, task_state):
        xp = array_namespace(readings["joint_pos"])
        return xp.arange(readings["joint_pos"].shape[0], device=readings["joint_pos"].device) == 0


def _env(task, num_envs=3, seed=0) -> VecEnv:
    return VecEnv(task, EnvConfig(task=task.name, num_envs=num_envs, nthread=1, seed=seed))


def _runner(env: RslRlVecEnv, **overrides) -> OnPolicyRunner:
    args = Args(task=env.env.task.name, ppo_num_envs=env.num_envs, ppo_steps_per_env=4, ppo_mini_batches=2,
                **overrides)
    cfg = ppo_train_config(args, env.obs_groups)
    cfg["actor"]["hidden_dims"] = cfg["critic"]["hidden_dims"] = [16]
    with contextlib.redirect_stdout(io.StringIO()):  # rsl_rl prints the models
        return OnPolicyRunner(env, cfg, log_dir=None, device="cpu")


def test_interface_shapes_and_dtypes():
    env = RslRlVecEnv(_env(make_task("dclaw-pose")))
    assert (env.num_envs, env.num_actions, env.max_episode_length) == (3, 9, 30)
    assert env.device == torch.device("cpu") and env.cfg["task"] == "dclaw-pose"
    assert env.obs_groups == {"actor": ["policy"], "critic": ["policy"]}
    obs = env.get_observations()
    assert isinstance(obs, TensorDict) and list(obs.keys()) == ["policy"] and tuple(obs.batch_size) == (3,)
    assert obs["policy"].shape == (3, 36) and obs["policy"].dtype == torch.float32
    obs, rewards, dones, extras = env.step(torch.zeros(3, 9))
    assert obs["policy"].shape == (3, 36)
    assert rewards.shape == (3,) and rewards.dtype == torch.float32
    assert dones.shape == (3,) and dones.dtype == torch.long and not dones.any()
    assert extras["time_outs"].dtype == torch.bool and not extras["time_outs"].any()
    assert "log" not in extras  # no episode finished
    torch.testing.assert_close(env.episode_length_buf, torch.ones(3, dtype=torch.long))


def test_truncation_is_a_time_out_and_failure_is_not():
    env = RslRlVecEnv(_env(FirstEnvFailsPose(episode_steps=3)))
    for step in (1, 2):
        _, _, dones, extras = env.step(torch.zeros(3, 9))
        assert dones.tolist() == [1, 0, 0] and extras["time_outs"].tolist() == [False, False, False]
        assert env.episode_length_buf.tolist() == [0, step, step]  # env 0 was reset at once
        assert extras["log"]["success"].shape == (1,)  # one finished episode
    obs, _, dones, extras = env.step(torch.zeros(3, 9))
    assert dones.tolist() == [1, 1, 1]
    assert extras["time_outs"].tolist() == [False, True, True]  # env 0 failed on its last step
    assert extras["log"]["success"].shape == (3,) and extras["log"]["return"].shape == (3,)
    assert env.episode_length_buf.tolist() == [0, 0, 0]
    torch.testing.assert_close(obs["policy"], env.get_observations()["policy"])  # first obs of the new episodes


def test_rewards_are_the_env_rewards_times_the_scale():
    with pytest.raises(ValueError, match="reward_scale"):
        RslRlVecEnv(_env(make_task("dclaw-turn")), reward_scale=0.0)
    scaled = RslRlVecEnv(_env(make_task("dclaw-turn"), seed=5), reward_scale=0.01)
    plain = _env(make_task("dclaw-turn"), seed=5)
    plain.reset()  # as the adapter does on construction
    actions = torch.rand(4, 3, 9, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for action in actions:
        _, reward, _, _ = scaled.step(action)
        _, expected, _, _, _ = plain.step(action)
        torch.testing.assert_close(reward, expected * 0.01)


def test_setting_the_episode_length_buffer_shortens_episodes():
    env = RslRlVecEnv(_env(make_task("dclaw-pose")))
    env.episode_length_buf = torch.tensor([29, 0, 28])
    _, _, dones, extras = env.step(torch.zeros(3, 9))
    assert dones.tolist() == [1, 0, 0] and extras["time_outs"].tolist() == [True, False, False]
    with pytest.raises(ValueError, match="shape"):
        env.episode_length_buf = torch.zeros(4, dtype=torch.long)


def test_asymmetric_task_gives_the_critic_its_own_group():
    env = RslRlVecEnv(_env(AsymmetricTurnTask(), num_envs=2))
    assert env.obs_groups == {"actor": ["policy"], "critic": ["critic"]}
    obs = env.get_observations()
    assert obs["policy"].shape == (2, 30) and obs["critic"].shape == (2, 31)
    obs, _, _, _ = env.step(torch.zeros(2, 9))
    assert obs["critic"].shape == (2, 31)
    _runner(env)  # rsl_rl accepts the groups


def test_ppo_trains_through_the_adapter_and_evaluates_with_the_normalized_mean():
    env = RslRlVecEnv(_env(make_task("dclaw-pose"), num_envs=8), reward_scale=0.01)
    torch.manual_seed(0)
    runner = _runner(env)
    before = [p.detach().clone() for p in runner.alg.actor.parameters()]
    runner.learn(num_learning_iterations=2)
    assert any(not torch.equal(a, b) for a, b in zip(before, runner.alg.actor.parameters(), strict=True))
    actor = runner.get_inference_policy()
    norm = actor.obs_normalizer
    assert int(norm.count) == 2 * 4 * 8  # two rollouts of 4 steps x 8 envs
    obs = env.get_observations()["policy"]
    policy = DeterministicPolicy(actor)
    with torch.no_grad():
        action = policy(obs)
        expected = actor.mlp((obs - norm._mean) / (norm._std + norm.eps))
    torch.testing.assert_close(action, expected)
    torch.testing.assert_close(policy(obs), action)  # deterministic
