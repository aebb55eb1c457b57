"""Every task registered in robots.TASKS on the VecEnv: shapes and dtypes, joint targets
within limits under any actions, seeding, and domain randomization. New tasks are covered
by registering them; keep the env counts and step counts small (2 CPU cores)."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from robots import TASKS, make_task
from toolkit.config import EnvConfig
from toolkit.envs.vec_env import VecEnv

N = 3
TASK_NAMES = sorted(TASKS)


def make_env(name: str, num_envs: int = N, **cfg) -> VecEnv:
    return VecEnv(make_task(name), EnvConfig(task=name, num_envs=num_envs, nthread=1, **cfg))


def has_dr(name: str) -> bool:
    return make_task(name).dr_table() is not None


def random_actions(env: VecEnv, steps: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(steps, env.num_envs, env.num_actions, generator=generator) * 2 - 1


@pytest.fixture(scope="module")
def envs():
    """One env per task, shared by the hypothesis examples (building one per example is slow)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = make_env(name, randomize=has_dr(name))
        return cache[name]

    return get


@pytest.mark.parametrize("name", TASK_NAMES)
def test_shapes_dtypes_and_spaces(name):
    env = make_env(name)
    task = env.task
    O, C, J = task.obs_layout.size, task.critic_obs_layout.size, task.robot.num_joints
    assert env.single_observation_space.shape == (O,) and env.observation_space.shape == (N, O)
    assert env.single_action_space.shape == (J,) and env.action_space.shape == (N, J)
    assert env.single_action_space.dtype == np.float32
    assert np.all(env.single_action_space.low == -1) and np.all(env.single_action_space.high == 1)
    obs, info = env.reset(seed=1)
    assert obs.shape == (N, O) and obs.dtype == torch.float32 and torch.isfinite(obs).all()
    assert env.observation_space.contains(obs.numpy())
    for action in random_actions(env, 3):
        obs, reward, terminated, truncated, info = env.step(action)
        assert obs.shape == (N, O) and obs.dtype == torch.float32 and torch.isfinite(obs).all()
        assert reward.shape == (N,) and reward.dtype == torch.float32 and torch.isfinite(reward).all()
        assert terminated.shape == truncated.shape == (N,)
        assert terminated.dtype == truncated.dtype == torch.bool
        assert info["success"].shape == (N,) and info["success"].dtype == torch.bool
        assert info["final_obs"].shape == (N, O)
        assert set(info["reward_terms"]) == set(task.reward_scales)
        total = sum(info["reward_terms"].values())
        torch.testing.assert_close(total.to(torch.float32), reward)
        if task.asymmetric:
            assert info["critic_obs"].shape == info["final_critic_obs"].shape == (N, C)
    # The observation layout's fields cover the observation exactly.
    assert sum(size for _, size in task.obs_layout.fields) == O


@pytest.mark.parametrize("name", TASK_NAMES)
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_any_actions_keep_joint_targets_within_limits(envs, name, data):
    env = envs(name)
    # Finite actions of any size, including exactly +-1 and far outside [-1, 1].
    element = st.one_of(st.floats(-1e3, 1e3, allow_nan=False), st.sampled_from([-1.0, 1.0]))
    actions = data.draw(arrays(np.float32, (4, env.num_envs, env.num_actions), elements=element))
    low, high = env.joint_low, env.joint_high
    for action in actions:
        previous = env.joint_targets.clone()
        env.step(action)
        targets = env.joint_targets
        assert bool(((targets >= low) & (targets <= high)).all())
        # The actuators receive exactly these targets (envs that autoreset get the reset pose).
        torch.testing.assert_close(env.sim.ctrl[:, env._actuators], targets, rtol=0, atol=0)
        if env.dr is None:  # without action noise a step moves a target by at most action_scale
            moved = (targets - previous).abs()[env.episode_step > 0]
            assert bool((moved <= env.action_scale + 1e-12).all())


@pytest.mark.parametrize("name", TASK_NAMES)
def test_seeding_is_reproducible_per_env(name):
    randomize = has_dr(name)
    a, b = make_env(name, seed=10, randomize=randomize), make_env(name, seed=10, randomize=randomize)
    single = make_env(name, num_envs=1, seed=12, randomize=randomize)
    actions = random_actions(a, 4)
    obs_a, obs_b, obs_single = a.reset(seed=10)[0], b.reset(seed=10)[0], single.reset(seed=12)[0]
    torch.testing.assert_close(obs_a, obs_b, rtol=0, atol=0)
    # Env 2 of a batch seeded 10 is a single env seeded 12 (gymnasium's seed + i convention).
    torch.testing.assert_close(obs_a[2:], obs_single, rtol=0, atol=0)
    assert not torch.equal(obs_a[0], obs_a[1]), "envs of one batch must start differently"
    for action in actions:
        obs_a, reward_a, *_ = a.step(action)
        obs_b, reward_b, *_ = b.step(action)
        obs_single, reward_single, *_ = single.step(action[2:])
        torch.testing.assert_close(obs_a, obs_b, rtol=0, atol=0)
        torch.testing.assert_close(reward_a, reward_b, rtol=0, atol=0)
        torch.testing.assert_close(obs_a[2:], obs_single, rtol=0, atol=0)
        torch.testing.assert_close(reward_a[2:], reward_single, rtol=0, atol=0)
    # Reseeding restarts the streams; another seed gives other starts.
    torch.testing.assert_close(a.reset(seed=10)[0], b.reset(seed=10)[0], rtol=0, atol=0)
    assert not torch.equal(a.reset(seed=11)[0], b.reset(seed=10)[0])
    # One seed per env.
    torch.testing.assert_close(a.reset(seed=[5, 6, 12])[0][2:], single.reset(seed=12)[0], rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in TASK_NAMES if has_dr(n)])
def test_domain_randomization_values(name):
    env = make_env(name, num_envs=4, seed=3, randomize=True)
    table, dr = env.dr.table, env.dr
    values = {k: v.clone() for k, v in dr.values.items()}

    def within(key, lo_hi):
        return bool(((values[key] >= lo_hi[0]) & (values[key] <= lo_hi[1])).all())

    assert within("joint_damping", table.joint_damping)
    assert within("actuator_gain", table.actuator_gain)
    assert within("friction", table.friction)
    assert within("mass", table.mass)
    assert within("object_scale", table.object_scale)
    nominal_gravity = torch.as_tensor(env.model.opt.gravity)
    # Box-Muller on uniforms clamped at 1e-12 cannot exceed 7.44 standard deviations.
    assert bool(((values["gravity"] - nominal_gravity).abs() <= 7.44 * table.gravity_std).all())
    latency = values["action_latency"]
    assert bool(((latency == latency.round()) & (latency >= 0) & (latency <= table.max_action_latency)).all())
    for key in ("joint_damping", "actuator_gain", "friction", "mass", "gravity"):
        assert not torch.equal(values[key][0], values[key][1]), f"DR value '{key}' is the same in envs 0 and 1"

    # The values are in force in the simulator (relative to the nominal model).
    dofs, actuators = torch.as_tensor(env.task.indices.dof_ids), env._actuators
    model = env.model
    torch.testing.assert_close(env.sim.model_field("dof_damping")[:, dofs],
                               torch.as_tensor(model.dof_damping[dofs]) * values["joint_damping"])
    kp = torch.as_tensor(model.actuator_gainprm[actuators.numpy(), 0]) * values["actuator_gain"]
    torch.testing.assert_close(env.sim.model_field("actuator_gainprm")[:, actuators, 0], kp)
    torch.testing.assert_close(env.sim.model_field("actuator_biasprm")[:, actuators, 1], -kp)
    torch.testing.assert_close(env.sim.model_field("opt.gravity"), values["gravity"])
    heavy = torch.as_tensor(model.body_mass) > 0
    torch.testing.assert_close(env.sim.model_field("body_mass")[:, heavy],
                               torch.as_tensor(model.body_mass[heavy.numpy()]) * values["mass"])
    torch.testing.assert_close(env.sim.model_field("body_inertia")[:, heavy],
                               torch.as_tensor(model.body_inertia[heavy.numpy()]) * values["mass"][..., None])
    colliding = torch.as_tensor((model.geom_contype != 0) | (model.geom_conaffinity != 0))
    torch.testing.assert_close(env.sim.model_field("geom_friction")[:, colliding, 0],
                               torch.as_tensor(model.geom_friction[colliding.numpy(), 0]) * values["friction"])
    # Only the sliding friction of colliding geoms is scaled: torsional and rolling stay nominal.
    torch.testing.assert_close(env.sim.model_field("geom_friction")[:, :, 1:],
                               torch.as_tensor(model.geom_friction[:, 1:]).expand(4, -1, -1))

    # Same seed, same values; resampled at every reset.
    again = make_env(name, num_envs=4, seed=3, randomize=True)
    for key, value in values.items():
        torch.testing.assert_close(again.dr.values[key], value, rtol=0, atol=0)
    env.reset()
    assert not torch.equal(env.dr.values["friction"], values["friction"])
    # Autoreset resamples only the envs that ended.
    settings_ = {f.name for f in dataclasses.fields(env.task)} if dataclasses.is_dataclass(env.task) else set()
    if "episode_steps" in settings_:
        short = VecEnv(make_task(name, episode_steps=2), EnvConfig(task=name, num_envs=4, nthread=1,
                                                                    randomize=True, seed=3))
        before = short.dr.values["friction"].clone()
        short.step(torch.zeros(4, short.num_actions))
        torch.testing.assert_close(short.dr.values["friction"], before, rtol=0, atol=0)
        short.step(torch.zeros(4, short.num_actions))  # every episode ends here
        assert bool((short.dr.values["friction"] != before).all())
    assert math.isfinite(float(env.step(torch.zeros(4, env.num_actions))[1].sum()))
