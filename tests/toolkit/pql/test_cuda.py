"""PQL with CUDA devices: learners on the GPU, and mujoco-warp envs on the GPU.

Skipped where torch sees no CUDA device (CI has none); on a GPU machine:
``python -m pytest tests/toolkit/pql/test_cuda.py``.
"""

import dataclasses

import pytest
import torch

from toolkit.checkpoint import load_checkpoint
from toolkit.pql.trainer import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _tensors(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _tensors(value)


def _train_and_check(cfg):
    result = train(cfg)
    assert result.stop_reason == "max_env_steps"
    checkpoint = load_checkpoint(result.run_dir)
    assert checkpoint["counters"]["v_updates"] > 0 and checkpoint["counters"]["p_updates"] > 0
    # Checkpoints hold CPU tensors whatever the roles' devices: they load on a machine without a GPU.
    assert {t.device.type for t in _tensors(checkpoint)} == {"cpu"}
    assert 0.0 <= result.eval_success <= 1.0

    from export.onnx import export_policy, load_exportable

    report = export_policy(load_exportable(result.run_dir), result.run_dir / "policy.onnx", rollout_steps=5,
                           rollout_envs=2, exporter="torchscript")
    assert report.max_abs_diff <= report.tolerance


@pytest.mark.parametrize("mode", ["sequential", "process"])
def test_cuda_learners_with_cpu_envs(tiny_config, mode):
    base = tiny_config()
    _train_and_check(tiny_config(mode=mode, max_time_s=300.0, max_env_steps=8 * 60,
                                 pql=dataclasses.replace(base.pql, learner_device="cuda")))


@pytest.mark.parametrize("mode", ["sequential", "process"])
def test_warp_envs_and_learners_on_cuda(tiny_config, mode):
    pytest.importorskip("mujoco_warp")
    # The learners follow --device when --pql.learner-device is left out.
    cfg = tiny_config(mode=mode, sim="mujoco_warp", device="cuda", max_time_s=600.0, max_env_steps=8 * 60)
    assert cfg.learner_device() == "cuda"
    _train_and_check(cfg)
