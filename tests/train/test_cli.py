"""The train.* commands: presets, flat group options, task options, and one-line errors for devices
and backends that are not there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from toolkit.config import PlacementKind, TrainConfig, from_dict, to_dict
from train.common import PRESETS, check_devices, parse
from train.dclaw import DEFAULT

REPO = Path(__file__).resolve().parents[2]


def test_the_gpu_preset_has_the_papers_values_and_single_options_override_it():
    cfg = parse(DEFAULT, "", ["--preset", "gpu"])
    assert (cfg.preset, cfg.env.num_envs, cfg.pql.batch_size) == ("gpu", 4096, 8192)
    assert cfg.pql.actor_hidden == cfg.pql.critic_hidden == (512, 256, 128)
    assert (cfg.pql.critic_updates_per_actor_step, cfg.pql.critic_updates_per_policy_update) == (8, 2)
    cfg = parse(DEFAULT, "", ["--preset", "gpu", "--num-envs", "1024", "--pql.batch-size", "4096"])
    assert (cfg.env.num_envs, cfg.pql.batch_size, cfg.pql.critic_updates_per_actor_step) == (1024, 4096, 8)
    cpu = parse(DEFAULT, "", [])
    assert cpu.preset == "cpu" and cpu == PRESETS["cpu"](DEFAULT) and cpu.env.num_envs == 64


def test_group_options_are_flat_and_the_config_round_trips_through_yaml():
    cfg = parse(DEFAULT, "", ["--randomize", "--num-envs", "8", "--placement", "sequential", "--max-time-s", "30",
                              "--task-options", "episode_steps=80", "goal_offset=[0.3, 1.0]", "--seed", "4"])
    assert cfg.env.randomize and cfg.env.num_envs == 8 and cfg.env.seed == 4
    assert cfg.placement.placement is PlacementKind.sequential and cfg.stop.max_time_s == 30.0
    assert cfg.env.task_overrides() == {"episode_steps": 80, "goal_offset": (0.3, 1.0)}
    text = yaml.safe_dump(to_dict(cfg))
    assert "placement: sequential" in text
    assert from_dict(TrainConfig, yaml.safe_load(text)) == cfg


def test_bad_task_options_are_a_clear_error():
    cfg = parse(DEFAULT, "", ["--task-options", "episode_steps"])
    with pytest.raises(ValueError, match="is not KEY=VALUE"):
        cfg.env.task_overrides()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line_naming_the_install():
    problem = check_devices(parse(DEFAULT, "", ["--device", "cuda"]))
    assert "\n" not in problem and "--device cuda" in problem and "pip install" in problem
    problem = check_devices(parse(DEFAULT, "", ["--pql.learner-device", "cuda"]))
    assert problem.startswith("--pql.learner-device cuda")
    result = subprocess.run([sys.executable, "-m", "train.dclaw", "--device", "cuda", "--max-time-s", "5"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "pip install" in result.stderr


def test_warp_without_mujoco_warp_is_one_line_naming_the_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mujoco_warp" else real(name, *a))
    problem = check_devices(parse(DEFAULT, "", ["--sim", "mujoco_warp"]))
    assert problem == "--sim mujoco_warp needs mujoco-warp: pip install -e '.[gpu]'"


def test_a_task_of_another_robot_and_bad_task_settings_exit_2(tmp_path):
    for args, message in ((["--task", "shadow_hand-reorient"], "is not a dclaw task"),
                          (["--task-options", "episode_steps=0"], "episode_steps must be >= 1")):
        result = subprocess.run([sys.executable, "-m", "train.dclaw", "--run-dir", str(tmp_path / "r"), *args],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and message in result.stderr, result.stderr
