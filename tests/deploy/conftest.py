"""Fixtures of the deployment tests: real policies (exporter-made or synthetic ONNX), the
D'Claw task, and the Dynamixel bus emulator on a pty."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

from deploy.dynamixel_emulator import DynamixelEmulator
from deploy.testing import synthetic_policy, task_metadata
from robots import make_task
from robots.dclaw.spec import DEFAULT_POSE, SERVO_IDS, VALVE_SERVO_ID

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def exported_policy(tmp_path_factory) -> Path:
    """An ONNX file written by the real exporter (``export.onnx``) from a trainer-format checkpoint
    of an untrained actor with a non-trivial observation normalizer; its checkpoint lies in
    ``<dir>/deploy-tests/``. Exported once per test session (~10 s), never cached across sessions:
    a cache keyed on some of the sources it depends on could hand out a stale file."""
    from export.onnx import export_policy, load_exportable
    from tests.export.helpers import make_checkpoint

    root = tmp_path_factory.mktemp("exported")
    path = root / "policy.onnx"
    checkpoint = make_checkpoint(root / "deploy-tests")
    export_policy(load_exportable(checkpoint), path, rollout_steps=5, rollout_envs=1)
    return path


@pytest.fixture
def task():
    return make_task("dclaw-turn")


@pytest.fixture
def make_policy(tmp_path, task):
    """``make_policy(name, **kwargs)``: a synthetic ONNX policy for the D'Claw turn task;
    ``metadata=`` replaces fields of the task's metadata, the rest goes to synthetic_policy."""

    def make(name: str = "synthetic.onnx", metadata: dict | None = None, **kwargs) -> Path:
        return synthetic_policy(tmp_path / name, task_metadata(task, **(metadata or {})), **kwargs)

    return make


@pytest.fixture
def emulator():
    """The D'Claw's bus (nine finger servos at the default pose, the valve servo at 0.5 rad).

    The emulator thread shares the interpreter with the code under test: a garbage collection
    (tens of ms with this test session's heap) would freeze the emulated servos past the SDK's
    ~35 ms reply timeout, which real servos never do. The collector is off while it serves, and
    its thread runs at a real-time priority where permitted (a loaded machine otherwise starves it).
    """
    positions = dict(zip(SERVO_IDS, DEFAULT_POSE.tolist(), strict=True))
    positions[VALVE_SERVO_ID] = 0.5
    gc.disable()
    try:
        with DynamixelEmulator(SERVO_IDS, (VALVE_SERVO_ID,), positions=positions, rt_priority=60) as emu:
            yield emu
    finally:
        gc.enable()


def all_torque_off(emu: DynamixelEmulator) -> bool:
    return not any(emu.torque(i) for i in emu.servos)


def assert_finite_rows(data: dict[str, np.ndarray]) -> None:
    """Every logged value is finite (the first period is NaN by definition: no previous step)."""
    for name, value in data.items():
        value = value[1:] if name == "timing/period" else value
        assert np.isfinite(np.asarray(value, dtype=np.float64)).all(), f"{name} has non-finite values"
