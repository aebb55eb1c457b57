"""Registers every task of :data:`robots.TASKS` with gymnasium (single env, numpy).

    import gymnasium
    import robots.gym  # noqa: F401  (registers the ids)
    env = gymnasium.make("toolkit/DClawTurn-v0", randomize=True, seed=3)
    # or, without the import: gymnasium.make("robots.gym:toolkit/DClawTurn-v0")

Ids are ``toolkit/<CamelCase task name>-v0`` ("dclaw-turn" -> "toolkit/DClawTurn-v0",
"shadow_hand-reorient" -> "toolkit/ShadowHandReorient-v0"); :data:`GYM_IDS` maps task names
to them. ``gymnasium.make`` keyword arguments: the :class:`toolkit.config.EnvConfig` fields
``sim``, ``device``, ``nthread``, ``randomize`` and ``seed``; ``render_mode`` and
``render_size``; anything else overrides a field of the task (``episode_steps=80``).
"""

from __future__ import annotations

import dataclasses
import re

import gymnasium

from robots import TASKS, make_task

#: Spellings that plain capitalization gets wrong.
_WORDS = {"dclaw": "DClaw"}
_ENV_FIELDS = {"sim", "device", "nthread", "randomize", "seed"}


def gym_id(task_name: str) -> str:
    """The gymnasium id of a registered task name."""
    words = re.split(r"[-_]", task_name)
    return "toolkit/" + "".join(_WORDS.get(word, word.capitalize()) for word in words) + "-v0"


def make_gym_env(task: str, render_mode: str | None = None, render_size: tuple[int, int] = (240, 320), **kwargs):
    """Entry point of the registered ids: a :class:`toolkit.envs.gym_adapter.GymEnv` of ``task``."""
    from toolkit.config import EnvConfig
    from toolkit.envs.gym_adapter import GymEnv

    env_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in _ENV_FIELDS}
    cfg = dataclasses.replace(EnvConfig(task=task, num_envs=1), **env_kwargs)
    return GymEnv(make_task(task, **kwargs), cfg, render_mode=render_mode, render_size=render_size)


#: task name -> gymnasium id, for every registered task.
GYM_IDS = {name: gym_id(name) for name in TASKS}

for _name, _id in GYM_IDS.items():
    if _id not in gymnasium.registry:
        gymnasium.register(id=_id, entry_point="robots.gym:make_gym_env", kwargs={"task": _name})
