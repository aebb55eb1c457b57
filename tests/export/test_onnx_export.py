"""ONNX export of P-learner policies: graph, metadata, parity, and the command line's errors.

One export per registered task (module fixture, through the command line) is shared by most
tests. The default (torch.export-based) exporter takes seconds, so it exports the first task and
the legacy TorchScript exporter the others: every test runs against files of both.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

import robots
from deploy.policy import load_policy, read_metadata
from export import onnx as ex
from robots import TASKS, make_task
from tests.export import asym_task
from tests.export.helpers import make_checkpoint
from toolkit import __version__
from toolkit.checkpoint import load_policy as load_torch_policy
from toolkit.config import EnvConfig
from toolkit.contract.obs_layout import ObsLayout
from toolkit.contract.policy import METADATA_FORMAT, PolicyMetadata
from toolkit.envs.vec_env import VecEnv

ROOT = Path(__file__).resolve().parents[2]
ENV_STEPS = 12_000


def run_cli(*argv) -> tuple[int, str, str]:
    """``python -m export.onnx`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = ex.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def torch_reference(checkpoint: Path):
    """actor(normalizer(obs)) rebuilt from the checkpoint, independently of export.onnx."""
    policy = load_torch_policy(checkpoint)

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return policy.actor(policy.obs_normalizer(torch.from_numpy(obs))).numpy()

    return act


EXPORTS = [("dclaw-turn", "auto")] + [(task, "torchscript") for task in sorted(TASKS) if task != "dclaw-turn"]


@pytest.fixture(scope="module", params=EXPORTS, ids=[f"{task}-{exporter}" for task, exporter in EXPORTS])
def exported(request, tmp_path_factory):
    """A checkpoint of every registered task exported through the command line."""
    task, exporter = request.param
    root = tmp_path_factory.mktemp(task)
    run_dir = root / "runs" / "turn-run"
    checkpoint = make_checkpoint(run_dir, task, env_steps=ENV_STEPS)
    out = root / "policy.onnx"
    code, stdout, stderr = run_cli(run_dir, "--out", out, "--rollout-steps", 10, "--exporter", exporter)
    assert code == 0, stderr
    return SimpleNamespace(task=task, run_dir=run_dir, checkpoint=checkpoint, out=out, stdout=stdout)


def rollout_obs(task_name: str, act, steps: int = 10, num_envs: int = 2, seed: int = 7) -> np.ndarray:
    env = VecEnv(make_task(task_name), EnvConfig(task=task_name, num_envs=num_envs, nthread=1, seed=seed))
    obs, _ = env.reset()
    rows = [obs.numpy().copy()]
    for _ in range(steps):
        obs, *_ = env.step(torch.from_numpy(act(obs.numpy())))
        rows.append(obs.numpy().copy())
    return np.concatenate(rows)


# --- the exported file ------------------------------------------------------------------
def test_cli_prints_interface_opset_parity_and_metadata(exported):
    task = make_task(exported.task)
    text = exported.stdout
    assert f"exported {exported.checkpoint} -> {exported.out}" in text
    assert re.search(rf"input\s+obs\s+float32 \[batch, {task.obs_layout.size}\]", text)
    assert re.search(rf"output\s+action\s+float32 \[batch, {task.robot.num_joints}\]", text)
    assert re.search(r"opset\s+17", text)
    diff = float(re.search(r"max \|onnxruntime - torch\| = (\S+)", text).group(1))
    assert 0 <= diff <= 1e-5
    for word in (task.robot.name, exported.task, task.obs_layout.schema_hash(), f"{ENV_STEPS} env steps", "turn-run"):
        assert word in text


def test_graph_is_one_dynamic_batch_float32_graph(exported):
    model = onnx.load(str(exported.out))
    onnx.checker.check_model(model, full_check=True)
    assert ex._opset(model) == 17
    (inp,), (out,) = model.graph.input, model.graph.output
    task = make_task(exported.task)
    for value, size in ((inp, task.obs_layout.size), (out, task.robot.num_joints)):
        dims = value.type.tensor_type.shape.dim
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert len(dims) == 2 and dims[0].dim_param and not dims[0].dim_value and dims[1].dim_value == size
    assert (inp.name, out.name) == ("obs", "action")
    assert not list(exported.out.parent.glob(".*.tmp")), "temporary file left behind"


def test_metadata_round_trip(exported):
    task = make_task(exported.task)
    robot = task.robot
    meta = read_metadata(exported.out)
    assert meta == PolicyMetadata(
        robot=robot, task=exported.task, task_overrides={}, obs_layout=task.obs_layout,
        schema_hash=task.obs_layout.schema_hash(), toolkit_version=__version__, run_name="turn-run",
        training_step=ENV_STEPS)
    assert not meta.robot.differences(robot) and meta.robot.max_joint_speed == robot.max_joint_speed
    assert (meta.obs_size, meta.action_size) == (task.obs_layout.size, robot.num_joints)
    props = {p.key: p.value for p in onnx.load(str(exported.out)).metadata_props}
    assert all(isinstance(v, str) for v in props.values())
    assert json.loads(props["joint_names"]) == list(robot.joint_names)
    assert json.loads(props["obs_layout"]) == [[n, s] for n, s in task.obs_layout.fields]
    assert json.loads(props["joint_low"]) == robot.joint_low.tolist()
    assert props["format"] == METADATA_FORMAT and float(props["max_joint_speed"]) == robot.max_joint_speed
    assert props["schema_hash"] == ObsLayout.from_json(props["obs_layout"]).schema_hash()


def test_parity_on_random_and_rollout_observations(exported):
    policy, reference = load_policy(exported.out), torch_reference(exported.checkpoint)
    norm = load_torch_policy(exported.checkpoint).obs_normalizer
    rng = np.random.default_rng(3)
    scale = np.sqrt(norm.var.numpy()) * rng.choice([0.5, 3.0, 20.0], size=(512, 1))  # some beyond the clip
    random_obs = (norm.mean.numpy() + scale * rng.standard_normal((512, policy.metadata.obs_size))).astype(np.float32)
    rollout = rollout_obs(exported.task, reference)
    for obs in (random_obs, rollout):
        action = policy(obs)
        assert np.abs(action - reference(obs)).max() <= 1e-5
        assert np.all(np.abs(action) <= 1.0)
    assert np.abs(policy(random_obs) - policy(random_obs[::-1])[::-1]).max() == 0.0


@pytest.mark.parametrize("batch", [1, 4096])
def test_batch_sizes(exported, batch):
    policy, reference = load_policy(exported.out), torch_reference(exported.checkpoint)
    obs = np.random.default_rng(batch).standard_normal((batch, policy.metadata.obs_size)).astype(np.float32)
    action = policy(obs)
    assert action.shape == (batch, policy.metadata.action_size) and action.dtype == np.float32
    assert np.abs(action - reference(obs)).max() <= 1e-5
    assert np.abs(policy(obs[:1]) - action[:1]).max() <= 1e-6


# --- --check-only -----------------------------------------------------------------------
def test_check_only_verifies_the_file(exported):
    code, stdout, stderr = run_cli(exported.run_dir, "--out", exported.out, "--check-only", "--rollout-steps", 5)
    assert code == 0, stderr
    assert stdout.startswith(f"verified {exported.out} against {exported.checkpoint}")


def test_check_only_detects_altered_weights(exported, tmp_path):
    model = onnx.load(str(exported.out))
    weight = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    array = onnx.numpy_helper.to_array(weight).copy()
    array.flat[0] += 0.5
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    altered = tmp_path / "altered.onnx"
    onnx.save(model, str(altered))
    code, _, stderr = run_cli(exported.run_dir, "--out", altered, "--check-only", "--rollout-steps", 5)
    assert code == 1
    assert "onnxruntime and torch disagree" in stderr and "tolerance 1.0e-05" in stderr


def test_check_only_detects_metadata_of_another_checkpoint(exported, tmp_path):
    other_run = tmp_path / "other"
    make_checkpoint(other_run, exported.task, env_steps=ENV_STEPS + 1)
    code, _, stderr = run_cli(other_run, "--out", exported.out, "--check-only", "--rollout-steps", 5)
    assert code == 1
    assert "'run_name'" in stderr and "'training_step'" in stderr


def test_failed_verification_keeps_the_old_file_and_leaves_no_temporary(exported, tmp_path, monkeypatch):
    model = onnx.load(str(exported.out))
    for entry in model.graph.initializer:  # an export that came out wrong: every bias shifted
        if len(entry.dims) == 1:
            entry.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(entry) + 0.1, entry.name))
    monkeypatch.setattr(ex, "to_onnx", lambda *args, **kwargs: model)
    out = tmp_path / "policy.onnx"
    out.write_bytes(b"previous export")
    with pytest.raises(ex.ExportError, match="disagree"):
        ex.export_policy(ex.load_exportable(exported.checkpoint), out, rollout_steps=3)
    assert out.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["policy.onnx"]


# --- policies other than the fixture's --------------------------------------------------
def test_asymmetric_critic_task_exports_the_actor_observation_only(tmp_path, monkeypatch):
    monkeypatch.setitem(robots.TASKS, asym_task.NAME, "tests.export.asym_task:AsymmetricTurnTask")
    checkpoint = make_checkpoint(tmp_path / "run", asym_task.NAME)
    source = ex.load_exportable(checkpoint)
    report = ex.export_policy(source, tmp_path / "asym.onnx", rollout_steps=10, exporter="torchscript")
    actor_layout = make_task(asym_task.NAME).obs_layout
    assert actor_layout.size < asym_task.CRITIC_LAYOUT.size
    assert report.input_shape[1] == actor_layout.size and report.max_abs_diff <= 1e-5
    assert read_metadata(tmp_path / "asym.onnx").obs_layout == actor_layout


def test_normalizer_settings_of_the_training_config_are_exported(tmp_path):
    """pql.obs_clip and pql.normalize_obs (the trainer's config) decide what the exported graph computes."""
    clipped = make_checkpoint(tmp_path / "clip", config={"pql": {"obs_clip": 1.5, "normalize_obs": True}})
    raw = make_checkpoint(tmp_path / "raw", config={"pql": {"obs_clip": 5.0, "normalize_obs": False}})
    policy = load_torch_policy(clipped)
    obs = (10 * np.random.default_rng(0).standard_normal((64, policy.obs_layout.size))).astype(np.float32)
    x = torch.from_numpy(obs)
    mean, std = policy.obs_normalizer.mean.float(), torch.sqrt(policy.obs_normalizer.var + 1e-8).float()
    with torch.no_grad():
        expected = {clipped: policy.actor(torch.clamp((x - mean) / std, -1.5, 1.5)).numpy(),
                    raw: load_torch_policy(raw).actor(x).numpy()}
    for checkpoint, want in expected.items():
        out = checkpoint.parent.parent / "policy.onnx"
        ex.export_policy(ex.load_exportable(checkpoint), out, rollout_steps=3, exporter="torchscript")
        assert np.abs(load_policy(out)(obs) - want).max() <= 1e-5


def test_latest_or_chosen_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    first = make_checkpoint(run_dir, env_steps=1000)
    second = make_checkpoint(run_dir, env_steps=2000, seed=1)
    assert ex.resolve_checkpoint(run_dir) == second
    assert ex.resolve_checkpoint(run_dir, Path(first.name)) == first
    assert ex.resolve_checkpoint(second) == second
    assert ex.resolve_checkpoint(tmp_path / "elsewhere", first) == first
    with pytest.raises(ex.ExportError, match="ckpt_000000001000.pt, ckpt_000000002000.pt"):
        ex.resolve_checkpoint(run_dir, Path("ckpt_5.pt"))


# --- errors -----------------------------------------------------------------------------
def _corrupt(run_dir: Path) -> None:
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "ckpt_000000000100.pt").write_bytes(b"not a checkpoint at all")


@pytest.mark.parametrize(("make", "message"), [
    (lambda run: None, "does not exist"),
    (lambda run: run.mkdir(), "has no checkpoint"),
    (_corrupt, "corrupt or not a checkpoint"),
    (lambda run: make_checkpoint(run, patch={"task": "dclaw-trun"}), "unknown task 'dclaw-trun'. Did you mean"),
    (lambda run: make_checkpoint(run, patch={"task_overrides": {"valve_size": 2}}), "cannot be made"),
    (lambda run: make_checkpoint(run, obs_layout=ObsLayout((("joint_pos", 9), ("valve_angle", 1)))),
     r"observation layout \(size 10, schema [0-9a-f]+\) differs from task 'dclaw-turn'"),
    (lambda run: make_checkpoint(run, action_dim=7), "needs 30 -> 9"),
    (lambda run: make_checkpoint(run, drop=("obs_normalizer",)), "incomplete or malformed: no key 'obs_normalizer'"),
    (lambda run: make_checkpoint(run, drop=("counters",)), "incomplete or malformed"),
], ids=["missing-run", "no-checkpoint", "corrupt", "unknown-task", "bad-override", "obs-layout", "action-dim",
        "no-normalizer", "no-counters"])
def test_bad_checkpoints_fail_with_a_message(tmp_path, make, message):
    run_dir = tmp_path / "run"
    make(run_dir)
    out = tmp_path / "policy.onnx"
    code, stdout, stderr = run_cli(run_dir, "--out", out)
    assert code == 1 and not stdout
    assert re.search(message, stderr), stderr
    assert "Traceback" not in stderr
    assert not out.exists()


def test_bad_arguments_fail_with_a_message(tmp_path):
    run_dir = tmp_path / "run"
    make_checkpoint(run_dir)
    for argv, message in [
        (("--out", tmp_path / "missing-dir" / "p.onnx"), "directory .* does not exist"),
        (("--out", tmp_path), "is a directory"),
        (("--out", tmp_path / "p.onnx", "--opset", 16), "opset 16 is too old"),
        (("--out", tmp_path / "p.onnx", "--rollout-steps", 0), "needs a rollout"),
        (("--out", tmp_path / "p.onnx", "--check-only"), "does not exist: nothing to check"),
        (("--out", tmp_path / "p.onnx", "--checkpoint", "ckpt_1.pt"), "checkpoint 'ckpt_1.pt' not found"),
    ]:
        code, _, stderr = run_cli(run_dir, *argv)
        assert code == 1 and re.search(message, stderr), (argv, stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_command_line_exit_status_and_help(tmp_path):
    result = subprocess.run([sys.executable, "-m", "export.onnx", str(tmp_path / "nope"), "--out",
                             str(tmp_path / "p.onnx")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "run directory" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(io.StringIO()) as help_text:
        ex.main(["--help"])
    assert exit_info.value.code == 0
    for flag in ("--out", "--checkpoint", "--check-only", "--opset", "--rollout-steps"):
        assert flag in help_text.getvalue()


def test_unwritable_directory_is_refused(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    make_checkpoint(run_dir)
    monkeypatch.setattr(ex.os, "access", lambda path, mode: False)  # root ignores chmod
    code, _, stderr = run_cli(run_dir, "--out", tmp_path / "p.onnx")
    assert code == 1 and "is not writable" in stderr


def test_helper_makes_trainer_format_checkpoints(tmp_path):
    state = torch.load(make_checkpoint(tmp_path / "run"), weights_only=False)
    for key in ("format", "toolkit_version", "run_name", "task", "task_overrides", "config", "obs_layout",
                "critic_obs_layout", "counters", "actor", "obs_normalizer"):
        assert key in state
    assert set(state["actor"]) == {"hidden", "action_dim", "state_dict"}
    assert state["obs_normalizer"]["count"] > 0 and not torch.allclose(state["obs_normalizer"]["var"],
                                                                       torch.ones_like(state["obs_normalizer"]["var"]))


def test_trained_actor_parity_is_bounded_by_float32_itself(tmp_path):
    """A trained actor (activations in the hundreds) exports within max(1e-5, 2 x torch's own
    float32 error), and a perturbation far below any real export bug still fails the check."""
    trained = Path(__file__).resolve().parents[1] / "data" / "dclaw_turn_trained.pt"
    source = ex.load_exportable(trained)
    out = tmp_path / "trained.onnx"
    report = ex.export_policy(source, out, rollout_steps=5, exporter="torchscript")
    assert 0 < report.float32_error < 1e-4
    assert report.max_abs_diff <= report.tolerance == ex.parity_tolerance(report.float32_error)
    model = onnx.load(str(out))
    bias = next(t for t in model.graph.initializer if len(t.dims) == 1 and t.dims[0] == source.metadata.action_size)
    model.graph.initializer.remove(bias)
    model.graph.initializer.append(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + 0.005, bias.name))
    altered = tmp_path / "altered.onnx"
    onnx.save(model, str(altered))
    with pytest.raises(ex.ExportError, match="disagree"):
        ex.verify_file(source, altered, rollout_steps=5)
