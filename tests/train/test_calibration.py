"""train --calibration: refused for another task before anything is created; otherwise its hash
and values travel into config.yaml, the checkpoints and the exported policy's metadata, and a
resume refuses a file that changed."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from deploy.policy import read_metadata
from export.onnx import export_policy, load_exportable
from robots import make_task
from toolkit.checkpoint import CheckpointError, load_checkpoint
from toolkit.contract.calibration import Calibration
from train.dclaw import DEFAULT, main

TINY = ["--num-envs", "4", "--placement", "sequential", "--max-time-s", "4", "--pql.actor-hidden", "16", "16",
        "--pql.critic-hidden", "16", "16", "--pql.batch-size", "32", "--pql.warmup-steps", "2",
        "--log.eval-interval-s", "2", "--log.eval-envs", "2", "--log.checkpoint-interval-s", "2",
        "--log.no-tensorboard"]


def calibration_for(task_name: str, **values) -> Calibration:
    return Calibration.nominal("dclaw", task_name, make_task(task_name).robot.joint_names, **values)


def test_a_calibration_of_another_task_is_refused_before_the_run_starts(tmp_path, capsys):
    path = calibration_for("dclaw-turn").save(tmp_path / "turn.yaml")
    run_dir = tmp_path / "run"
    assert main(DEFAULT, "dclaw-", "", ["--task", "dclaw-pose", "--calibration", str(path), "--run-dir",
                                        str(run_dir), *TINY]) == 2
    err = capsys.readouterr().err
    assert "--calibration refused" in err and "task 'dclaw-turn'" in err and "task 'dclaw-pose'" in err
    assert not run_dir.exists()


def test_the_calibration_travels_into_config_checkpoint_and_onnx_metadata(tmp_path):
    calibration = calibration_for("dclaw-pose", joint_damping_scale=np.full(9, 1.5), action_latency=1)
    path = calibration.save(tmp_path / "calib.yaml")
    run_dir = tmp_path / "run"
    assert main(DEFAULT, "dclaw-", "", ["--task", "dclaw-pose", "--calibration", str(path), "--run-dir",
                                        str(run_dir), *TINY]) == 0
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["env"]["calibration"] == str(path)
    assert saved["calibration_used"]["hash"] == calibration.content_hash()
    assert saved["calibration_used"]["values"]["action_latency"] == 1
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint["calibration"]["hash"] == calibration.content_hash()
    onnx = tmp_path / "policy.onnx"
    export_policy(load_exportable(run_dir), onnx, rollout_steps=3, rollout_envs=1)
    metadata = read_metadata(onnx)
    assert metadata.calibration["hash"] == calibration.content_hash()
    assert metadata.calibration["values"]["joint_damping_scale"]["FFJ10"] == 1.5
    # The file changed after the run: resuming would train around other values.
    calibration.replace(action_latency=2).save(path)
    with pytest.raises(CheckpointError, match="now holds"):
        from toolkit.pql.trainer import Trainer
        from train.common import task_factory

        Trainer(DEFAULT.replace(resume=str(run_dir)), task_factory(DEFAULT.env.__class__(task="dclaw-pose")))
