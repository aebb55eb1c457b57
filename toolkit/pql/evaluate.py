"""Deterministic evaluation: one episode per env, no exploration noise."""

from __future__ import annotations

import numpy as np
import torch

from toolkit.envs.vec_env import VecEnv
from toolkit.nn import Actor
from toolkit.normalizer import RunningNorm


@torch.no_grad()
def evaluate(env: VecEnv, actor: Actor, obs_norm: RunningNorm | None, seed: int) -> dict[str, float]:
    """Run every env of ``env`` for one episode with the greedy policy.

    Returns eval_success (fraction of episodes successful at their last step), eval_return,
    eval_length and ``eval_<metric>`` for the task's episode metrics (means over episodes).
    """
    obs, _ = env.reset(seed=seed)
    n = env.num_envs
    finished = torch.zeros(n, dtype=torch.bool, device=env.device)
    results: dict[str, torch.Tensor] = {}
    for _ in range(env.task.episode_steps + 1):
        action = actor(obs_norm(obs) if obs_norm is not None else obs)
        obs, _, _, _, info = env.step(action)
        newly = info["done"] & ~finished
        if bool(newly.any()):
            values = {"return": info["episode_return"], "success": info["episode_success"],
                      "length": info["episode_length"], **info["episode_metrics"]}
            for name, value in values.items():
                results.setdefault(name, torch.zeros(n, dtype=torch.float64, device=env.device))
                results[name][newly] = value[newly].to(torch.float64)
            finished |= newly
        if bool(finished.all()):
            break
    if not bool(finished.all()):
        raise RuntimeError(f"evaluation: {int((~finished).sum())} envs did not finish within episode_steps")
    return {f"eval_{name}": float(value.mean()) for name, value in results.items()}


def pose_model_data(env: VecEnv, data, index: int = 0) -> None:
    """Put env ``index``'s state into a CPU ``mujoco.MjData`` of the env's model (any sim backend)
    and recompute its kinematics: what a renderer draws."""
    import mujoco

    sim = env.sim
    for name in ("qpos", "qvel", "mocap_pos", "mocap_quat"):
        target = getattr(data, name)
        if target.size:
            target[:] = getattr(sim, name)[index].detach().cpu().numpy().reshape(target.shape)
    mujoco.mj_forward(env.model, data)


@torch.no_grad()
def render_episode(env: VecEnv, actor: Actor, obs_norm: RunningNorm | None, seed: int, renderer) -> tuple[
        list[np.ndarray], dict[str, float]]:
    """One greedy episode of env 0, a frame per step (with the step and success burned in).

    Returns the frames and the episode's return, length and success.
    """
    import mujoco

    from toolkit.video import annotate, caption

    obs, _ = env.reset(seed=seed)
    data = mujoco.MjData(env.model)
    frames, total, success = [], 0.0, False
    steps = env.task.episode_steps
    for step in range(steps):
        pose_model_data(env, data)
        frames.append(annotate(renderer.render(data), caption(step=step, steps=steps, success=success)))
        obs, reward, _, _, info = env.step(actor(obs_norm(obs) if obs_norm is not None else obs))
        total += float(reward[0])
        success = bool(info["success"][0])
        if bool(info["done"][0]):
            break
    return frames, {"return": total, "length": len(frames), "success": float(success)}
