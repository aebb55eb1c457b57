"""One control step's task side, shared by the training VecEnv and the deployment runner.

The simulator (or the robot) sits between :func:`next_joint_targets` and :func:`task_step`:

1. ``targets = next_joint_targets(targets, action, robot, perturbation, rand)``: the relative
   action mapping, after the domain randomizer's action noise and latency when there is one;
2. the physics advance ``substeps(control_dt, timestep)`` model timesteps (or the robot moves);
3. ``outcome = task_step(task, readings, task_state, action, targets, rand)``: reward terms x
   scales, success, failure termination, goal updates, episode metrics;
4. ``obs = observe(task, readings, task_state, targets, action, perturbation, rand)``.

Every function takes arrays of one namespace (torch in training, numpy at deployment) with a
leading env dimension, and draws random numbers only through ``rand`` (the per-env streams of
:mod:`toolkit.contract.rng`), in the same order on both sides: a deploy-sim episode and a
training env with the same seed are the same episode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from array_api_compat import array_namespace

from toolkit.contract.robot import relative_joint_target

if TYPE_CHECKING:
    from toolkit.contract.dr import DomainRandomizer
    from toolkit.contract.task import Task

Array = Any


@dataclass
class StepOutcome:
    """What one step's action led to, per env: reward (n,) float64 = sum of ``terms`` (each the
    task's unscaled term times its scale, (n,)), success (n,) bool, terminated (n,) bool (failure:
    the episode ends) and the task's episode metrics (each (n,); meaningful when an episode ends)."""

    reward: Array
    terms: dict[str, Array]
    success: Array
    terminated: Array
    metrics: dict[str, Array]


def task_step(task: Task, readings: dict[str, Array], task_state: dict[str, Array], action: Array,
              joint_targets: Array, rand) -> StepOutcome:
    """The task's verdict on the state that the last ``action`` (n, J) led to; updates the goals
    of ``task_state`` in place where the task resamples them on success."""
    terms = task.reward_terms(readings, task_state, action, joint_targets)
    scaled = {name: task.reward_scales[name] * value for name, value in terms.items()}
    reward = sum(scaled.values())
    success = task.success(readings, task_state)
    terminated = task.terminated(readings, task_state)
    task.update_goals(readings, task_state, success, rand)
    return StepOutcome(reward, scaled, success, terminated, task.episode_metrics(task_state))


def next_joint_targets(joint_targets: Array, action: Array, action_scale, joint_low, joint_high,
                       perturbation: DomainRandomizer | None, rand) -> Array:
    """The joint targets (n, J) the robot is commanded after ``action`` (n, J; clipped to [-1, 1]):
    ``clip(targets + action_scale * applied, low, high)``, where ``applied`` is the action itself,
    or the randomizer's noisy, delayed version of it."""
    xp = array_namespace(action)
    action = xp.clip(action, -1.0, 1.0)
    applied = action if perturbation is None else perturbation.perturb_action(action, rand)
    return relative_joint_target(joint_targets, applied, action_scale, joint_low, joint_high)


def observed_readings(task: Task, readings: dict[str, Array], perturbation: DomainRandomizer | None,
                      rand) -> dict[str, Array]:
    """The readings an observation is computed from: ``readings``, with the randomizer's
    observation noise on the task's ``noisy_readings`` when there is a randomizer."""
    if perturbation is not None and task.noisy_readings:
        return perturbation.noisy_readings(readings, task.noisy_readings, rand)
    return readings


def observe(task: Task, readings: dict[str, Array], task_state: dict[str, Array], joint_targets: Array,
            last_action: Array, perturbation: DomainRandomizer | None, rand) -> Array:
    """The actor's observation (n, O): the task's own, from :func:`observed_readings`."""
    return task.observe(observed_readings(task, readings, perturbation, rand), task_state, joint_targets,
                        last_action)


def substeps(control_dt: float, timestep: float) -> tuple[int, float]:
    """Physics steps per control period, and the model timestep that makes them exact.

    ``substeps = ceil(control_dt / timestep)``; when the control period is not a whole number of
    model timesteps (60 Hz on a 5 ms model) the timestep shrinks, never grows (stability), to
    ``control_dt / substeps``. The one rule of the training env and the deployment sim.
    """
    if not control_dt > 0 or not timestep > 0:
        raise ValueError(f"control_dt and timestep must be positive, got {control_dt} and {timestep}")
    count = max(1, math.ceil(control_dt / timestep - 1e-9))
    exact = control_dt / count
    return count, (timestep if math.isclose(exact, timestep, rel_tol=1e-12) else exact)
