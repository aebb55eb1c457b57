"""Robots and their tasks; ``TASKS`` is the registry every command resolves names with."""

from __future__ import annotations

import difflib
import importlib

from toolkit.envs.task import Task

#: task name -> "module:factory". Modules are imported on demand.
TASKS: dict[str, str] = {
    "dclaw-turn": "robots.dclaw.turn:TurnTask",
}


def make_task(name: str, **overrides) -> Task:
    """Instantiate a registered task; ``overrides`` set its dataclass fields."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown task '{name}'.{hint} Registered tasks: {', '.join(sorted(TASKS))}")
    module_name, attr = TASKS[name].split(":")
    return getattr(importlib.import_module(module_name), attr)(**overrides)
