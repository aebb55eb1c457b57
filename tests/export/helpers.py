"""Checkpoints for export tests, in the trainer's format (see toolkit/checkpoint.py's docstring)."""

from __future__ import annotations

from pathlib import Path

import torch

import toolkit
from robots import make_task
from toolkit.checkpoint import save_checkpoint
from toolkit.contract.obs_layout import ObsLayout
from toolkit.nn import Actor
from toolkit.normalizer import RunningNorm


def make_checkpoint(run_dir: Path, task: str = "dclaw-turn", *, hidden: tuple[int, ...] = (64, 32),
                    env_steps: int = 12_000, seed: int = 0, task_overrides: dict | None = None,
                    config: dict | None = None, obs_layout: ObsLayout | None = None, action_dim: int | None = None,
                    drop: tuple[str, ...] = (), patch: dict | None = None) -> Path:
    """Save an untrained policy (fresh Actor, RunningNorm with non-trivial statistics) as a checkpoint
    of ``run_dir`` and return its path. ``obs_layout``/``action_dim`` default to the task's; ``drop``
    removes top-level keys and ``patch`` replaces them (to make broken checkpoints). An asymmetric
    task's checkpoint also gets a critic observation normalizer, as the trainer writes."""
    overrides = dict(task_overrides or {})
    made = make_task(task, **overrides)
    layout = obs_layout or made.obs_layout
    action_dim = action_dim or made.robot.num_joints
    torch.manual_seed(seed)
    actor = Actor(layout.size, action_dim, hidden)
    norm = RunningNorm(layout.size)
    generator = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-2, 1, layout.size, dtype=torch.float64)  # features of very different spread
    offset = torch.linspace(-1, 1, layout.size, dtype=torch.float64)
    for _ in range(3):
        norm.update(offset + scale * torch.randn(256, layout.size, generator=generator, dtype=torch.float64))
    state = {
        "toolkit_version": toolkit.__version__,
        "run_name": Path(run_dir).name,
        "task": task,
        "task_overrides": overrides,
        "config": config or {},
        "obs_layout": layout.to_json(),
        "critic_obs_layout": made.critic_obs_layout.to_json(),
        "counters": {"env_steps": env_steps, "v_updates": 8 * env_steps, "p_updates": 4 * env_steps},
        "actor": {"hidden": list(hidden), "action_dim": action_dim, "state_dict": actor.state_dict()},
        "obs_normalizer": norm.state_dict(),
    }
    if made.asymmetric:
        state["critic_obs_normalizer"] = RunningNorm(made.critic_obs_layout.size).state_dict()
    for key in drop:
        state.pop(key)
    state.update(patch or {})
    return save_checkpoint(run_dir, state, env_steps)
