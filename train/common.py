"""What every train.* command shares: parse a TrainConfig with tyro (presets first), check the
task and the devices, hand the trainer its task, map failures to exit statuses.

This is where robots and the trainer meet: the toolkit's trainer is handed a task factory and
knows no robot.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import sys
from collections.abc import Callable

import tyro

from robots import TASKS, make_task
from toolkit.checkpoint import CheckpointError
from toolkit.config import EnvConfig, TrainConfig
from toolkit.contract.calibration import CalibrationError, load_calibration
from toolkit.contract.task import Task
from toolkit.pql.roles import TrainingError
from toolkit.pql.trainer import resolve_config, train

#: Named defaults (--preset); single options given on the command line override them.
PRESETS: dict[str, Callable[[TrainConfig], TrainConfig]] = {
    "cpu": lambda cfg: dataclasses.replace(cfg, preset="cpu"),
    "gpu": lambda cfg: dataclasses.replace(
        cfg, preset="gpu", env=dataclasses.replace(cfg.env, num_envs=4096),
        pql=dataclasses.replace(cfg.pql, batch_size=8192, actor_hidden=(512, 256, 128), critic_hidden=(512, 256, 128),
                                critic_updates_per_actor_step=8, critic_updates_per_policy_update=2)),
}


def preset_config(default: TrainConfig, argv: list[str] | None) -> TrainConfig:
    """``default`` with the values of the ``--preset`` named in ``argv`` (cpu when none)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=default.preset)
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return PRESETS[known.preset](default)


def parse(default: TrainConfig, description: str, argv: list[str] | None = None) -> TrainConfig:
    return tyro.cli(TrainConfig, default=preset_config(default, argv), description=description, args=argv)


def task_factory(env: EnvConfig) -> Callable[[], Task]:
    """The picklable factory of the task ``env`` names, with its ``--task-options``."""
    return functools.partial(make_task, env.task, **env.task_overrides())


def check_devices(cfg: TrainConfig) -> str | None:
    """A one-line problem with the asked-for devices and backends (None: fine)."""
    import torch

    cuda = [name for name, device in (("--device", cfg.env.device), ("--pql.learner-device", cfg.learner_device()))
            if device.startswith("cuda")]
    if cuda and not torch.cuda.is_available():
        return (f"{cuda[0]} cuda needs a CUDA build of torch and a GPU; this torch ({torch.__version__}) sees none. "
                "On a GPU machine: pip install -e '.[gpu]' torch==2.13.0 (PyPI's Linux torch is the CUDA build)")
    if cfg.env.sim == "mujoco_warp" and importlib.util.find_spec("mujoco_warp") is None:
        return "--sim mujoco_warp needs mujoco-warp: pip install -e '.[gpu]'"
    return None


def main(default: TrainConfig, robot_prefix: str, description: str, argv: list[str] | None = None) -> int:
    cfg = parse(default, description, argv)

    def fail(message: str, status: int = 2) -> int:
        print(f"error: {message}", file=sys.stderr, flush=True)
        return status

    try:
        run = resolve_config(cfg)  # on --resume: the saved run's task and settings
    except CheckpointError as error:
        return fail(str(error))
    robot_tasks = sorted(name for name in TASKS if name.startswith(robot_prefix))
    if run.env.task not in robot_tasks:
        return fail(f"--task {run.env.task} is not a {robot_prefix.rstrip('-')} task; choose one of {robot_tasks}")
    problem = check_devices(run)
    if problem:
        return fail(problem)
    try:
        factory = task_factory(run.env)
        task = factory()  # bad task options fail here, with the task's own message
    except (TypeError, ValueError) as error:
        return fail(f"task '{run.env.task}': {error}")
    if run.env.calibration is not None:  # before the run directory exists
        try:
            calibration = load_calibration(run.env.calibration)
            calibration.check_for(task.robot.name, task.name, task.robot.joint_names)
        except CalibrationError as error:
            return fail(f"--calibration refused: {error}")
        print(f"train: {calibration.summary()}", flush=True)
    try:
        result = train(cfg, factory)
    except (CheckpointError, MemoryError) as error:
        return fail(str(error))
    except TrainingError as error:
        return fail(f"training stopped: {error}", 1)
    return 130 if result.stop_reason == "interrupted" else 0
