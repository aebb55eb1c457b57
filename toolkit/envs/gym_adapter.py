"""A single gymnasium env (numpy in, numpy out) over a one-env :class:`VecEnv`.

For tools that expect ``gymnasium.Env`` (``gymnasium.make``, ``check_env``, wrappers,
third-party agents). Training uses the batched :class:`VecEnv` directly. Registration with
gymnasium lives in ``robots.gym`` (toolkit does not import robots)::

    import gymnasium, robots.gym
    env = gymnasium.make("toolkit/DClawTurn-v0", randomize=True)

Unlike the VecEnv, this env does not autoreset: after ``terminated or truncated`` call
``reset()``, as gymnasium requires.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium
import numpy as np
import torch

from toolkit.config import EnvConfig
from toolkit.contract.task import Task
from toolkit.envs.vec_env import VecEnv


class GymEnv(gymnasium.Env):
    """``task`` as a gymnasium env.

    Args:
        task: the task to simulate.
        cfg: simulation settings; ``num_envs`` is forced to 1 and ``seed`` seeds the first
            ``reset()`` that has no seed of its own.
        render_mode: None or "rgb_array": frames from the task's camera (``task.camera``) by
            :class:`toolkit.video.Renderer`, headless (EGL, else OSMesa; no ``MUJOCO_GL`` needed).
        render_size: (height, width) of rendered frames.

    Observation: float32 (O,) in the task's layout; action: float32 (J,) in [-1, 1].
    ``info``: ``success`` (bool), ``reward_terms`` (dict of floats), ``nan_reset`` (bool), the
    randomization values in force (``dr``, dict of float64 arrays) when randomizing, and at an
    episode's end ``episode_return``, ``episode_length``, ``episode_success`` and
    ``success_rate`` (over the last 100 episodes).
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, task: Task, cfg: EnvConfig | None = None, render_mode: str | None = None,
                 render_size: tuple[int, int] = (240, 320)) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got '{render_mode}'")
        cfg = dataclasses.replace(cfg or EnvConfig(task=task.name), num_envs=1)
        self.vec_env = VecEnv(task, cfg)
        self.observation_space = self.vec_env.single_observation_space
        self.action_space = self.vec_env.single_action_space
        self.metadata = {**self.metadata, "render_fps": round(1.0 / task.robot.control_dt)}
        self.render_mode = render_mode
        self._render_size = render_size
        self._renderer = None
        if render_mode is not None:
            from toolkit.video import camera_id

            camera_id(self.vec_env.model, task.camera)  # an unknown camera fails now, not at the first frame

    @property
    def task(self) -> Task:
        return self.vec_env.task

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)  # seeds self.np_random, as gymnasium expects
        obs, _ = self.vec_env.reset(seed=seed, options=options)
        return _numpy(obs[0]), self._dr_info()

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action has shape {action.shape}, expected {self.action_space.shape} "
                             f"(num_joints,) for task '{self.task.name}'")
        obs, reward, terminated, truncated, info = self.vec_env.step(action[None])
        done = bool(info["done"][0])
        out = {
            "success": bool(info["success"][0]),
            "nan_reset": bool(info["nan_reset"][0]),
            "reward_terms": {name: float(value[0]) for name, value in info["reward_terms"].items()},
            **self._dr_info(),
        }
        if done:
            # The VecEnv already reset this env; hand back the episode's last observation.
            obs = info["final_obs"]
            out["episode_return"] = float(info["episode_return"][0])
            out["episode_length"] = int(info["episode_length"][0])
            out["episode_success"] = bool(info["episode_success"][0])
            out["success_rate"] = info["success_rate"]
        return _numpy(obs[0]), float(reward[0]), bool(terminated[0]), bool(truncated[0]), out

    def render(self) -> np.ndarray | None:
        """An RGB frame (H, W, 3) uint8 of the current state seen from the task's camera (render_mode
        "rgb_array"); :class:`toolkit.video.GLUnavailableError` when this machine has no OpenGL."""
        if self.render_mode is None:
            return None
        if self._renderer is None:
            from toolkit.video import Renderer

            height, width = self._render_size
            self._renderer = Renderer(self.vec_env.model, self.task.camera, width=width, height=height)
        return self._renderer.render(self.vec_env.sim.get_data(0))

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.vec_env.close()

    def _dr_info(self) -> dict[str, Any]:
        dr = self.vec_env.dr
        if dr is None:
            return {}
        return {"dr": {name: _numpy(value[0]).astype(np.float64) for name, value in dr.flat_values().items()}}


def _numpy(value: torch.Tensor) -> np.ndarray:
    return value.detach().cpu().numpy().copy()
