"""Configuration dataclasses shared by every command.

tyro turns the field docstrings into ``--help``; the whole nested config is written to
``config.yaml`` beside every run. Dataclasses are frozen and hold no mutable defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal


@dataclass(frozen=True)
class EnvConfig:
    """Which task to simulate, how many copies, and where."""

    task: str = "dclaw-turn"
    """Registered task name (see robots.TASKS)."""
    num_envs: int = 64
    """Number of environments stepped together."""
    sim: Literal["mujoco_batch", "mujoco_warp"] = "mujoco_batch"
    """Physics backend: the MuJoCo C engine on CPU, or mujoco-warp (GPU)."""
    device: str = "cpu"
    """Torch device of the env's tensors (cuda with mujoco_warp)."""
    nthread: int = 0
    """Physics threads of the C engine (0: all CPUs)."""
    randomize: bool = False
    """Domain randomization: dynamics, noise, latency and pushes from the robot's DR table."""
    seed: int = 0
    """Seed of resets and domain randomization."""


def to_dict(config) -> dict:
    """A plain dict of a (nested) config dataclass, for YAML/JSON."""
    return asdict(config)
