"""The backend interface the deployment runner drives (simulation or hardware alike).

A backend owns the robot side of one control step: it reads sensors into the task's
``readings`` dict and applies joint-position commands. Everything policy-side (observation,
action mapping, safety clamp, timing) lives in :mod:`deploy.runner`, so the two backends cannot
drift apart in how they interpret a policy.

Arrays: readings are float64 ``(1, k)`` (a batch of one env, the shape the task code expects);
commands are float64 ``(num_joints,)`` in the robot spec's joint order, in rad.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from toolkit.contract.robot import RobotSpec
from toolkit.contract.task import Rand, Task

if TYPE_CHECKING:
    from toolkit.contract.dr import DomainRandomizer


@dataclass
class ResetResult:
    """What a backend hands the runner at the start of an episode.

    Attributes:
        task_state: the task's goal/bookkeeping rows, each (1, k) (e.g. ``goal_angle``).
        joint_targets: the joint targets in force after the reset, (num_joints,).
        episode_values: fixed-shape per-episode values to log (domain-randomization draws, ...);
            names and shapes must match :meth:`Backend.episode_fields`.
    """

    task_state: dict[str, np.ndarray]
    joint_targets: np.ndarray
    episode_values: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Field:
    """Shape (per step or per episode) and dtype of a logged quantity."""

    shape: tuple[int, ...]
    dtype: str = "float64"


class Backend(ABC):
    """One robot (real or simulated) executing joint-position commands.

    Lifecycle: ``open()`` (connect, check, enable) -> per episode ``reset(rand)`` then
    ``read()``/``write()`` at control rate -> ``close()``. ``close()`` must leave the robot safe
    (torque off on hardware) and be callable twice, after a failed ``open()`` and from a
    ``finally`` block while an exception is in flight. Backends are context managers.
    """

    #: short name written into logs ("sim", "dclaw").
    name: str

    def __init__(self, task: Task) -> None:
        self.task = task

    @property
    def robot(self) -> RobotSpec:
        """The robot this backend drives (the runner checks the policy against it)."""
        return self.task.robot

    @abstractmethod
    def open(self) -> None:
        """Connect and check the robot; raises :class:`deploy.errors.HardwareFault`."""

    @abstractmethod
    def reset(self, rand: Rand) -> ResetResult:
        """Bring the robot to the task's initial state and draw the episode's task state.

        ``rand`` is the task protocol's random source of this one env (``rand((1, ...))``; the
        runner's per-env stream, :mod:`toolkit.contract.rng`): the draws of the training env."""

    @property
    def randomizer(self) -> DomainRandomizer | None:
        """The domain randomizer whose action and observation perturbations the runner applies
        (a randomized sim); None for a real robot and a nominal sim."""
        return None

    @abstractmethod
    def read(self) -> tuple[dict[str, np.ndarray], bool]:
        """Current readings (each (1, k) float64) and whether they are fresh, i.e. the device
        produced new data since the previous read (stale data feeds the runner's watchdog)."""

    @abstractmethod
    def write(self, joint_targets: np.ndarray) -> None:
        """Apply joint-position targets (rad, (num_joints,)); already clamped by the runner."""

    def describe_stale(self) -> str:
        """Which device stopped updating, for the watchdog's message ('' if unknown)."""
        return ""

    @abstractmethod
    def hold(self) -> None:
        """Stop commanding motion (keep the current pose) after a fault; must not raise."""

    @abstractmethod
    def close(self) -> None:
        """Leave the robot safe (torque off) and release resources; idempotent."""

    # --- logging --------------------------------------------------------------------
    def info(self) -> dict:
        """JSON-serializable facts about the backend for the log's attributes."""
        return {"backend": self.name}

    def step_fields(self) -> dict[str, Field]:
        """Extra per-step quantities returned by :meth:`state` (e.g. the sim state)."""
        return {}

    def state(self) -> dict[str, np.ndarray]:
        """Extra per-step values (matching :meth:`step_fields`), taken right after a read."""
        return {}

    def episode_fields(self) -> dict[str, Field]:
        """Per-episode values a reset returns in :attr:`ResetResult.episode_values`."""
        return {}

    def __enter__(self) -> Backend:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
