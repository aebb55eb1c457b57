"""benchmarks.env_throughput (VecEnv vs raw mujoco.batch) on a tiny run: CLI, keys, sanity."""

import json

import pytest
import tyro

from benchmarks.env_throughput import Args, main, run


def test_tiny_run_reports_both_sides(capsys):
    args = tyro.cli(Args, args=["--task", "dclaw-turn", "--num-envs", "2", "--steps", "12", "--repeats", "1",
                                "--nthread", "1", "--json"])
    main(args)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"env_steps_per_s", "raw_steps_per_s", "ratio", "task", "num_envs", "nthread",
            "physics_steps_per_env_step", "sim", "device"} <= set(result)
    assert result["task"] == "dclaw-turn" and result["num_envs"] == 2 and result["nthread"] == 1
    assert result["sim"] == "mujoco_batch" and result["device"] == "cpu"
    assert result["physics_steps_per_env_step"] == 20
    assert result["env_steps_per_s"] > 0 and result["raw_steps_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["env_steps_per_s"] / result["raw_steps_per_s"], rel=1e-3)


def test_rejects_unknown_tasks_and_empty_runs():
    with pytest.raises(ValueError, match="unknown task 'dclaw-tunr'"):
        run(Args(task="dclaw-tunr"))
    with pytest.raises(ValueError, match="--num-envs must be >= 1"):
        run(Args(num_envs=0))
