"""What every train.* command shares: parse a TrainConfig with tyro, check the task, run."""

from __future__ import annotations

import sys

import tyro

from robots import TASKS
from toolkit.config import TrainConfig
from toolkit.pql.trainer import cli_main


def main(default: TrainConfig, robot_prefix: str, description: str) -> int:
    cfg = tyro.cli(TrainConfig, default=default, description=description)
    robot_tasks = sorted(name for name in TASKS if name.startswith(robot_prefix))
    if cfg.task not in robot_tasks:
        print(f"error: --task {cfg.task} is not a {robot_prefix.rstrip('-')} task; choose one of {robot_tasks}",
              file=sys.stderr)
        return 2
    return cli_main(cfg)
