"""The single-env gymnasium adapter and its registration (robots.gym)."""

import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import robots.gym  # noqa: F401  (registers the ids)
from robots import TASKS, make_task
from robots.gym import GYM_IDS, gym_id
from toolkit.envs.gym_adapter import GymEnv
from toolkit.video import GLUnavailableError, Renderer


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
        # Rendering needs OpenGL: checked below.
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


def test_render_shows_the_task_camera_and_passes_check_env_render_checks():
    env = gymnasium.make("toolkit/DClawTurn-v0", render_mode="rgb_array", render_size=(48, 64))
    env.reset(seed=0)
    try:
        frame = env.render()
    except GLUnavailableError as error:  # only a missing OpenGL skips; any other render error fails
        pytest.skip(f"no OpenGL on this machine: {error}")
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8 and int(frame.max()) > 0
    vec_env = env.unwrapped.vec_env
    data = vec_env.sim.get_data(0)
    with Renderer(vec_env.model, "overview", width=64, height=48) as overview, \
            Renderer(vec_env.model, "side", width=64, height=48) as side:
        np.testing.assert_array_equal(frame, overview.render(data))  # the task's camera ...
        assert not np.array_equal(frame, side.render(data))  # ... not just any view
    check_env(env.unwrapped)  # with its render checks
    env.close()


def test_unknown_camera_fails_when_the_env_is_made():
    task = make_task("dclaw-turn")
    task.camera = "top"
    with pytest.raises(ValueError, match="no camera 'top'; its cameras: 'side', 'overview'"):
        GymEnv(task, render_mode="rgb_array")
    GymEnv(task).close()  # without rendering the camera is never needed
