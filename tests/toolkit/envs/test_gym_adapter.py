"""The single-env gymnasium adapter and its registration (robots.gym)."""

import os
import subprocess
import sys
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import robots.gym  # noqa: F401  (registers the ids)
from robots import TASKS
from robots.gym import GYM_IDS, gym_id
from toolkit.envs.gym_adapter import GymEnv


def test_every_task_has_an_id():
    assert gym_id("dclaw-turn") == "toolkit/DClawTurn-v0"
    assert gym_id("shadow_hand-reorient") == "toolkit/ShadowHandReorient-v0"
    assert set(GYM_IDS) == set(TASKS)
    assert all(gym_id in gymnasium.registry for gym_id in GYM_IDS.values())


def test_passes_gymnasium_check_env():
    env = gymnasium.make("toolkit/DClawTurn-v0")
    assert isinstance(env.unwrapped, GymEnv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Rendering needs an OpenGL context (MUJOCO_GL=egl, checked in a subprocess below).
        check_env(env.unwrapped, skip_render_check=True)
    # The observation is unbounded by design (noise, joint overshoot); every other warning fails.
    unexpected = [str(w.message) for w in caught if "infinity" not in str(w.message)]
    assert unexpected == []
    env.close()


def test_make_with_module_prefix_and_settings():
    env = gymnasium.make("robots.gym:toolkit/DClawTurn-v0", randomize=True, seed=4, episode_steps=3)
    obs, info = env.reset(seed=7)
    assert obs.shape == (30,) and obs.dtype == np.float32
    assert set(info["dr"]) >= {"joint_damping", "actuator_gain", "friction", "gravity"}
    assert env.unwrapped.task.episode_steps == 3
    for _ in range(3):
        action = env.action_space.sample()
        obs, reward, terminated, truncated, info = env.step(action)
        assert isinstance(reward, float) and type(terminated) is bool and type(truncated) is bool
        assert obs.shape == (30,) and obs.dtype == np.float32 and np.isfinite(obs).all()
        assert set(info["reward_terms"]) == set(env.unwrapped.task.reward_scales)
    # Episodes end by truncation; info reports the episode, and the final observation is returned.
    assert truncated and info["episode_length"] == 3 and 0.0 <= info["success_rate"] <= 1.0
    # (a fresh episode's observation would have a zero last action)
    last_action = obs[env.unwrapped.task.obs_layout.slices()["last_action"]]
    np.testing.assert_allclose(last_action, action, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match=r"action has shape \(8,\), expected \(9,\)"):
        env.unwrapped.step(np.zeros(8, dtype=np.float32))
    with pytest.raises(ValueError, match="render_mode"):
        gymnasium.make("toolkit/DClawTurn-v0", render_mode="human")


def test_same_seed_same_episode():
    env = gymnasium.make("toolkit/DClawTurn-v0")
    actions = np.random.default_rng(0).uniform(-1, 1, (5, 9)).astype(np.float32)

    def rollout(seed):
        obs, _ = env.reset(seed=seed)
        return [obs] + [env.step(a)[0] for a in actions]

    first, second, other = rollout(3), rollout(3), rollout(4)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


RENDER = """
import gymnasium, robots.gym
from gymnasium.utils.env_checker import check_env
env = gymnasium.make("toolkit/DClawTurn-v0", render_mode="rgb_array", render_size=(48, 64))
env.reset(seed=0)
try:
    frame = env.render()
except Exception as error:  # no EGL on this machine
    print("NO-GL", error)
else:
    check_env(env.unwrapped)  # with its render checks
    print("FRAME", frame.shape, frame.dtype, int(frame.max()))
"""


def test_render_rgb_array_and_check_env_render_checks():
    result = subprocess.run([sys.executable, "-c", RENDER], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MUJOCO_GL": "egl"})
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    if line.startswith("NO-GL"):
        pytest.skip(f"no OpenGL (EGL) on this machine: {line}")
    assert line.startswith("FRAME (48, 64, 3) uint8") and int(line.split()[-1]) > 0
