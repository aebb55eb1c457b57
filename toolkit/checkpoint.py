"""Checkpoints: atomic writes, discovery of the latest one, and loading the policy part.

A checkpoint is one ``torch.save`` dict (``FORMAT``) in ``<run_dir>/checkpoints/``::

    format, toolkit_version, run_name, task, task_overrides, calibration (the summary the run trained
    around, {} for none), config (nested dict),
    obs_layout, critic_obs_layout (JSON of ObsLayout), counters (env_steps, v_updates, ...),
    actor: {hidden, action_dim, state_dict}, critic: {hidden, num_atoms, v_min, v_max, state_dict},
    critic_target, actor_optimizer, critic_optimizer (state dicts),
    obs_normalizer, critic_obs_normalizer (RunningNorm state dicts)
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from toolkit.contract.obs_layout import ObsLayout
from toolkit.nn import Actor
from toolkit.normalizer import RunningNorm

FORMAT = "sim2real-pql-checkpoint/1"
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A run directory or checkpoint that cannot be used (missing, corrupt, incompatible)."""


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: Path, state: dict, env_steps: int, keep: int = 3) -> Path:
    """Write ``state`` atomically (temp file + rename) as ckpt_<env_steps>.pt; keep the newest ``keep``."""
    directory = checkpoint_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, **state}
    path = directory / f"ckpt_{env_steps:012d}.pt"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def latest_checkpoint(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory '{run_dir}' does not exist")
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"run directory '{run_dir}' has no checkpoint in {checkpoint_dir(run_dir)} "
                              "(train longer than one checkpoint interval, or pass --checkpoint)")
    return found[-1]


def load_checkpoint(path: Path) -> dict:
    """Load and validate a checkpoint file (or the latest one of a run directory)."""
    path = Path(path)
    if path.is_dir():
        path = latest_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises several types for truncated/corrupt files
        raise CheckpointError(f"checkpoint '{path}' is corrupt or not a checkpoint: {error}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a {FORMAT} file")
    state["path"] = str(path)
    return state


@dataclass
class LoadedPolicy:
    """The exportable part of a checkpoint: normalizer + actor, and what describes them."""

    actor: Actor
    obs_normalizer: RunningNorm
    normalize_obs: bool
    obs_layout: ObsLayout
    task: str
    task_overrides: dict
    calibration: dict
    run_name: str
    env_steps: int
    checkpoint_path: str


def load_policy(path: Path) -> LoadedPolicy:
    """Rebuild the actor and its observation normalizer from a checkpoint or run directory."""
    state = load_checkpoint(path)
    try:
        layout = ObsLayout.from_json(state["obs_layout"])
        actor_state = state["actor"]
        actor = Actor(layout.size, int(actor_state["action_dim"]),
                      tuple(actor_state["hidden"]))
        actor.load_state_dict(actor_state["state_dict"])
        pql = state.get("config", {}).get("pql", {})
        # The actor saw observations normalized (and clipped) exactly as the trainer's config said.
        normalizer = RunningNorm(layout.size, clip=float(pql.get("obs_clip", 5.0)))
        normalizer.load_state_dict(state["obs_normalizer"])
        task, env_steps = str(state["task"]), int(state["counters"]["env_steps"])
    except KeyError as error:
        raise CheckpointError(f"checkpoint '{state['path']}' is incomplete or malformed: no key {error}") from error
    except (RuntimeError, ValueError, TypeError) as error:
        raise CheckpointError(f"checkpoint '{state['path']}' does not match this toolkit's policy: {error}") from error
    actor.eval()
    return LoadedPolicy(actor=actor, obs_normalizer=normalizer, normalize_obs=bool(pql.get("normalize_obs", True)),
                        obs_layout=layout, task=task, task_overrides=dict(state.get("task_overrides", {})),
                        calibration=dict(state.get("calibration", {})),
                        run_name=state.get("run_name", ""), env_steps=env_steps, checkpoint_path=state["path"])
