"""deploy.policy: the torch-free reader and runner of exported policies.

The files here are built directly with onnx.helper (Gemm + Tanh), so these tests need neither
torch nor the exporter; tests/export checks real exports against the same reader.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from deploy.policy import OnnxPolicy, load_policy, read_metadata
from robots.dclaw.spec import SPEC
from toolkit.contract.obs_layout import ObsLayout
from toolkit.contract.policy import (
    METADATA_FORMAT,
    PolicyError,
    PolicyMetadata,
    decode_metadata,
    encode_metadata,
    metadata_fields,
)

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = ObsLayout((("joint_pos", 9), ("joint_targets", 9), ("valve_sincos", 2), ("goal_error", 1),
                    ("last_action", 9)))
FIELDS = [key for key in metadata_fields() if key != "format"]


def make_metadata(robot=None, **changes) -> PolicyMetadata:
    values = dict(robot=SPEC if robot is None else dataclasses.replace(SPEC, **robot), task="dclaw-turn",
                  task_overrides={"episode_steps": 60, "goal_offset": (0.3, 1.0)}, obs_layout=LAYOUT,
                  schema_hash=LAYOUT.schema_hash(), toolkit_version="0.1.0", run_name="turn-run", training_step=4096,
                  calibration={"hash": "abc", "damping_scale": [1.0] * 9})
    values.update(changes)
    return PolicyMetadata(**values)


def write_policy(path: Path, props: dict | None = None, *, obs_size: int = LAYOUT.size, action_size: int = 9,
                 batch: str | int = "batch", weight_fill: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An ONNX policy action = tanh(obs @ W + b) with ``props`` (default: make_metadata()) as metadata."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((obs_size, action_size)) / np.sqrt(obs_size)).astype(np.float32)
    if weight_fill is not None:
        weight[:] = weight_fill
    bias = (0.1 * rng.standard_normal(action_size)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["obs", "W", "b"], ["pre"]), helper.make_node("Tanh", ["pre"], ["action"])],
        "policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, [batch, obs_size])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, [batch, action_size])],
        [onnx.numpy_helper.from_array(weight, "W"), onnx.numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    helper.set_model_props(model, encode_metadata(make_metadata()) if props is None else props)
    onnx.save(model, str(path))
    return weight, bias


@pytest.fixture
def policy_file(tmp_path) -> tuple[Path, np.ndarray, np.ndarray]:
    path = tmp_path / "policy.onnx"
    weight, bias = write_policy(path)
    return path, weight, bias


def props_with(**changes) -> dict:
    props = encode_metadata(make_metadata())
    props.update(changes)
    return props


# --- running ----------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 5, 4096])
def test_policy_computes_the_graph(policy_file, batch):
    path, weight, bias = policy_file
    policy = load_policy(path)
    obs = np.random.default_rng(batch).standard_normal((batch, LAYOUT.size))
    action = policy(obs)  # float64 in: cast to float32
    assert action.shape == (batch, 9) and action.dtype == np.float32
    np.testing.assert_allclose(action, np.tanh(obs.astype(np.float32) @ weight + bias), atol=1e-6)
    assert (policy.input_name, policy.output_name) == ("obs", "action")
    assert isinstance(policy, OnnxPolicy) and "policy.onnx" in repr(policy)


def test_session_uses_one_intra_op_thread_on_cpu(policy_file):
    policy = load_policy(policy_file[0])
    assert policy.session.get_session_options().intra_op_num_threads == 1
    assert policy.session.get_providers() == ["CPUExecutionProvider"]
    assert load_policy(policy_file[0], intra_op_threads=2).session.get_session_options().intra_op_num_threads == 2
    with pytest.raises(PolicyError, match="intra_op_threads"):
        load_policy(policy_file[0], intra_op_threads=-1)


@pytest.mark.parametrize(("obs", "message"), [
    (np.zeros(30), r"must be 2-D \(batch, 30\), got shape \(30,\)"),
    (np.zeros((1, 1, 30)), "must be 2-D"),
    (np.zeros((2, 29)), "has size 29, the policy takes 30 .joint_pos:9"),
    (np.zeros((0, 30)), "batch is empty"),
    (np.where(np.arange(30) == 20, np.nan, 0.0)[None].repeat(3, 0),
     r"NaN or inf in rows \[0, 1, 2\], fields \['goal_error'\]"),
    (np.where(np.arange(30) == 0, np.inf, 0.0)[None], r"fields \['joint_pos'\]"),
    (np.full((1, 30), 1e39), r"NaN or inf"),  # finite float64, inf as float32
    ([["a"] * 30], "cannot be converted to float32"),
])
def test_bad_observations_are_refused(policy_file, obs, message):
    with pytest.raises(PolicyError, match=message):
        load_policy(policy_file[0])(obs)


def test_a_signal_during_inference_stays_an_interruption(policy_file):
    """deploy.run turns SIGTERM/SIGHUP into Interrupted, which can surface inside onnxruntime's
    call: it must reach the runner as the signal (exit 128 + signum), not as a policy failure."""
    import signal

    from deploy.errors import Interrupted

    policy = load_policy(policy_file[0])
    session = policy.session

    class SignalledSession:
        def __init__(self, error):
            self.error = error

        def run(self, outputs, feeds):
            session.run(outputs, feeds)
            raise self.error

    policy.session = SignalledSession(Interrupted(signal.SIGHUP))
    with pytest.raises(Interrupted, match="SIGHUP"):
        policy(np.zeros((1, LAYOUT.size)))
    policy.session = SignalledSession(RuntimeError("provider lost"))
    with pytest.raises(PolicyError, match="onnxruntime failed: provider lost"):
        policy(np.zeros((1, LAYOUT.size)))


def test_non_finite_action_is_refused(tmp_path):
    write_policy(tmp_path / "nan.onnx", weight_fill=np.nan)
    with pytest.raises(PolicyError, match="non-finite"):
        load_policy(tmp_path / "nan.onnx")(np.zeros((1, 30)))


# --- metadata ---------------------------------------------------------------------------
def test_metadata_round_trip(policy_file):
    meta = read_metadata(policy_file[0])
    assert meta == make_metadata() == load_policy(policy_file[0]).metadata
    assert meta.task_overrides == {"episode_steps": 60, "goal_offset": [0.3, 1.0]}  # as JSON gives it back
    assert (meta.obs_size, meta.action_size, meta.training_step) == (30, 9, 4096)
    np.testing.assert_array_equal(meta.robot.joint_low, SPEC.joint_low)
    assert meta.robot.max_joint_speed == SPEC.max_joint_speed and meta.calibration["hash"] == "abc"
    assert meta.robot.hardware == {} and not meta.robot.differences(SPEC)  # servo IDs are not the policy's business
    assert meta != make_metadata(training_step=1)
    assert meta != make_metadata(robot={"action_scale": SPEC.action_scale * 2})
    assert meta != make_metadata(robot={"max_joint_speed": 1.0}) and meta != make_metadata(calibration={})
    props = {p.key: p.value for p in onnx.load(str(policy_file[0])).metadata_props}
    assert props == encode_metadata(meta) and props["format"] == METADATA_FORMAT
    assert decode_metadata({**props, "unknown_future_key": "x"}) == meta
    assert "dclaw-turn" in meta.summary() and meta.schema_hash in meta.summary()


def test_metadata_is_immutable():
    meta = make_metadata()
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.task = "dclaw-pose"
    with pytest.raises(ValueError):
        meta.robot.joint_low[0] = 0.0


@pytest.mark.parametrize("key", ["format", *FIELDS])
def test_missing_metadata_key_is_named(tmp_path, key):
    props = encode_metadata(make_metadata())
    del props[key]
    write_policy(tmp_path / "p.onnx", props)
    for read in (read_metadata, load_policy):
        with pytest.raises(PolicyError, match=f"'{key}' is missing"):
            read(tmp_path / "p.onnx")


TAMPERED = {
    "schema-hash": ({"schema_hash": "0123456789abcdef"}, "'schema_hash' '0123456789abcdef' does not match"),
    "layout-changed": ({"obs_layout": json.dumps([[n, s] for n, s in LAYOUT.fields] + [["extra", 1]])},
                       "'schema_hash' .* does not match"),
    "layout-json": ({"obs_layout": "[[joint_pos, 9]"}, "'obs_layout' cannot be parsed"),
    "layout-duplicate": ({"obs_layout": '[["a", 1], ["a", 2]]'}, "'obs_layout' cannot be parsed"),
    "format": ({"format": "sim2real-pql-onnx-policy/1"}, "'format' is 'sim2real-pql-onnx-policy/1'.*export the"),
    "joint-count": ({"joint_low": json.dumps(SPEC.joint_low[:8].tolist())}, "'joint_low' must hold 9 finite"),
    "nan-scale": ({"action_scale": json.dumps([float("nan")] * 9)}, "'action_scale' must hold 9 finite"),
    "scale-text": ({"action_scale": '["a", 1]'}, "'action_scale' must be a list of numbers"),
    "scale-json": ({"action_scale": "[0.15, "}, "'action_scale' cannot be parsed"),
    "limits": ({"joint_high": json.dumps(SPEC.joint_low.tolist())}, "'joint_low' must lie below 'joint_high'"),
    "default-outside": ({"default_pose": json.dumps([2.0] * 9)}, "'default_pose' lies outside"),
    "control-dt": ({"control_dt": "0"}, "'control_dt' must be a positive number"),
    "speed": ({"max_joint_speed": "-3"}, "'max_joint_speed' must be a positive number"),
    "scale-negative": ({"action_scale": json.dumps([-0.1] * 9)}, "'action_scale' must be positive"),
    "calibration": ({"calibration": "3"}, "'calibration' must be a JSON object"),
    "step-float": ({"training_step": "1.5"}, "'training_step' must be an integer"),
    "step-negative": ({"training_step": "-1"}, "'training_step' must be an integer"),
    "joint-names": ({"joint_names": json.dumps(["a"] * 9)}, "'joint_names' must be unique"),
    "overrides": ({"task_overrides": "[1, 2]"}, "'task_overrides' must be a JSON object"),
    "robot": ({"robot": ""}, "'robot' must be a non-empty string"),
}


@pytest.mark.parametrize(("changes", "message"), TAMPERED.values(), ids=TAMPERED.keys())
def test_tampered_metadata_is_detected(tmp_path, changes, message):
    write_policy(tmp_path / "p.onnx", props_with(**changes))
    with pytest.raises(PolicyError, match=message) as error:
        read_metadata(tmp_path / "p.onnx")
    assert str(tmp_path / "p.onnx") in str(error.value)


def test_duplicate_metadata_key_is_detected(tmp_path):
    path = tmp_path / "p.onnx"
    write_policy(path)
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "schema_hash", "0123456789abcdef"
    onnx.save(model, str(path))
    with pytest.raises(PolicyError, match="'schema_hash' appears twice"):
        read_metadata(path)


# --- graph vs metadata, and files that are not policies ---------------------------------
@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(obs_size=29), "input 'obs' has size 29 but metadata 'obs_layout' implies 30"),
    (dict(action_size=8), "output 'action' has size 8 but metadata 'joint_names' implies 9"),
    (dict(batch=1), "fixed batch size 1"),
])
def test_graph_must_match_its_metadata(tmp_path, kwargs, message):
    write_policy(tmp_path / "p.onnx", **kwargs)
    with pytest.raises(PolicyError, match=message):
        load_policy(tmp_path / "p.onnx")


def test_files_that_are_not_policies(tmp_path):
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "missing.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\xff garbage \x12")
    with pytest.raises(PolicyError, match="garbage.onnx"):
        read_metadata(tmp_path / "garbage.onnx")
    write_policy(tmp_path / "plain.onnx", props={})
    with pytest.raises(PolicyError, match="'format' is missing: not a policy written by export.onnx"):
        load_policy(tmp_path / "plain.onnx")


def test_deploy_policy_does_not_import_torch(policy_file):
    code = (
        "import sys\nimport numpy as np\nimport deploy.policy as p\n"
        "policy = p.load_policy(sys.argv[1])\npolicy(np.zeros((1, policy.metadata.obs_size)))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'train', 'export'))\n"
        "assert not bad, bad\nprint('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(policy_file[0])], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
