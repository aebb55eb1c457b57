"""Robots and their tasks; ``TASKS`` is the registry every command resolves names with."""

from __future__ import annotations

import dataclasses
import difflib
import importlib

from toolkit.contract.task import Task

#: task name -> "module:factory". Modules are imported on demand.
TASKS: dict[str, str] = {
    "dclaw-turn": "robots.dclaw.turn:TurnTask",
    "dclaw-pose": "robots.dclaw.pose:PoseTask",
    "shadow_hand-reorient": "robots.shadow_hand.reorient:ReorientTask",
}


def make_task(name: str, **overrides) -> Task:
    """Instantiate a registered task; ``overrides`` set its dataclass fields."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown task '{name}'.{hint} Registered tasks: {', '.join(sorted(TASKS))}")
    module_name, attr = TASKS[name].split(":")
    factory = getattr(importlib.import_module(module_name), attr)
    if dataclasses.is_dataclass(factory):
        fields = {field.name for field in dataclasses.fields(factory) if field.init}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"task '{name}' has no setting(s) {unknown}; its settings are {sorted(fields)}")
    return factory(**overrides)
