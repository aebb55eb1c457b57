"""Export a P-learner policy to one self-describing ONNX file and check it against torch.

    python -m export.onnx runs/turn --out policy.onnx                # latest checkpoint of the run
    python -m export.onnx runs/turn --out policy.onnx --check-only   # re-verify an existing file

The graph is raw observation ``obs`` (batch, O) float32 -> observation normalizer -> actor
(tanh) -> ``action`` (batch, A) float32 in [-1, 1], with a dynamic batch dimension. Only the
actor's observation is exported (an asymmetric critic's privileged inputs stay behind). The file's
metadata (robot, task, joints, limits, control dt, observation layout and its schema hash, run,
step, ...) is :class:`toolkit.contract.policy.PolicyMetadata`, which the deployment reads back.

Every export is verified before it replaces ``--out``: ``onnx.checker``, the contract's metadata
decoder (round trip, graph shapes), and onnxruntime vs torch on random observations and on
observations of a short rollout of the task with the policy; a max abs difference above
``TOLERANCE`` (1e-5) fails the export with the numbers.

One refinement of the 1e-5 rule: a trained actor can have hidden and pre-tanh activations in
the hundreds, and then float32 arithmetic itself is less precise than 1e-5 (measured on a
trained D'Claw actor: torch float32 vs torch float64 differ by 1.6e-5, onnxruntime vs torch
float32 by 1.4e-5). The bound is therefore max(1e-5, 2 x torch's own float32 error against
float64 on the same observations), reported as ``float32_error``: an export bug (a lost
normalizer, a wrong clip, a missing tanh) is orders of magnitude larger than either.

The file is written to a temporary file beside ``--out`` and renamed only once verified: a
failed export leaves no half-written file.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch
import tyro
from torch import nn

import toolkit
from robots import make_task
from toolkit.checkpoint import (
    CheckpointError,
    LoadedPolicy,
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_policy,
)
from toolkit.config import EnvConfig
from toolkit.contract.policy import METADATA_FORMAT, PolicyError, PolicyMetadata, decode_entries, encode_metadata
from toolkit.contract.task import Task
from toolkit.normalizer import RunningNorm

#: Largest |onnxruntime - torch| accepted on any action component.
TOLERANCE = 1e-5
MIN_OPSET = 17
INPUT_NAME = "obs"
OUTPUT_NAME = "action"
#: Rows of random observations compared (plus one batch-1 call).
RANDOM_ROWS = 1024
EXPORTERS = ("dynamo", "torchscript")
_QUIET_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript")


class ExportError(RuntimeError):
    """An export that cannot be done or did not verify; the message says why (no traceback needed)."""


class PolicyGraph(nn.Module):
    """What is exported: raw observation -> normalizer (optional) -> actor (tanh) -> action."""

    def __init__(self, actor: nn.Module, normalizer: RunningNorm | None) -> None:
        super().__init__()
        self.actor, self.normalizer = actor, normalizer

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(obs if self.normalizer is None else self.normalizer(obs))


@dataclass
class Exportable:
    """A policy checked against its task, with the torch graph and the metadata to export.

    Attributes:
        policy: normalizer + actor and what describes them (from a checkpoint, or built in memory).
        graph: the torch module the ONNX graph must reproduce.
        metadata: what the ONNX file will say about itself.
        extra_metadata: further keys written into the file (the reader ignores them).
    """

    policy: LoadedPolicy
    graph: PolicyGraph
    metadata: PolicyMetadata
    extra_metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class ExportReport:
    """The outcome of an export or a check: what the file holds and how closely it matches torch."""

    path: Path
    checkpoint: str
    input_name: str
    input_shape: list
    output_name: str
    output_shape: list
    opset: int
    diff_random: float
    diff_rollout: float
    float32_error: float
    rows_random: int
    rows_rollout: int
    rollout: str
    exporter: str
    metadata: PolicyMetadata

    @property
    def max_abs_diff(self) -> float:
        return max(self.diff_random, self.diff_rollout)

    @property
    def tolerance(self) -> float:
        return parity_tolerance(self.float32_error)

    def format(self, check_only: bool = False) -> str:
        """The command's printout: graph interface, opset, parity figures and a metadata summary."""
        meta = self.metadata
        robot = meta.robot
        overrides = meta.task_overrides or "{}"
        lines = [
            f"verified {self.path} against {self.checkpoint}" if check_only
            else f"exported {self.checkpoint} -> {self.path}",
            f"  input     {self.input_name}  float32 {_shape(self.input_shape)}",
            f"  output    {self.output_name}  float32 {_shape(self.output_shape)}  (in [-1, 1])",
            f"  opset     {self.opset}  ({self.exporter})",
            f"  parity    max |onnxruntime - torch| = {self.max_abs_diff:.2e} (tolerance {self.tolerance:.1e}; "
            f"torch float32 vs float64 {self.float32_error:.1e}): "
            f"{self.diff_random:.2e} on {self.rows_random} random observations, {self.diff_rollout:.2e} on "
            f"{self.rows_rollout} rollout observations ({self.rollout})",
            "  metadata",
            f"    format          {METADATA_FORMAT}",
            f"    robot / task    {robot.name} / {meta.task}, overrides {overrides}",
            f"    calibration     {meta.calibration.get('hash', '-') if meta.calibration else 'none'}",
            f"    run / step      {meta.run_name or '-'} / {meta.training_step} env steps",
            f"    joints ({meta.action_size})      {' '.join(robot.joint_names)}",
            f"    action scale    {_floats(robot.action_scale)}",
            f"    joint limits    low {_floats(robot.joint_low)}  high {_floats(robot.joint_high)}",
            f"    default pose    {_floats(robot.default_pose)}",
            f"    control dt      {robot.control_dt:g} s ({1 / robot.control_dt:g} Hz), max joint speed "
            f"{robot.max_joint_speed:g} rad/s",
            f"    observation     {meta.obs_size}: " + ", ".join(f"{n}:{s}" for n, s in meta.obs_layout.fields),
            f"    schema hash     {meta.schema_hash}",
            f"    toolkit         {meta.toolkit_version}",
        ]
        return "\n".join(lines)


# --- loading and checking the policy ----------------------------------------------------
def resolve_checkpoint(run: Path, checkpoint: Path | None = None) -> Path:
    """The checkpoint file named by a run directory (its latest) or a file, and ``--checkpoint``.

    ``checkpoint`` is a path, or a file name inside ``<run>/checkpoints/``.
    """
    run = Path(run)
    if checkpoint is None:
        if run.is_file():
            return run
        try:
            return latest_checkpoint(run)
        except CheckpointError as error:
            raise ExportError(str(error)) from None
    checkpoint = Path(checkpoint)
    candidates = [checkpoint] if checkpoint.is_absolute() else [checkpoint, checkpoint_dir(run) / checkpoint]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    available = ", ".join(p.name for p in list_checkpoints(run)) or "none"
    raise ExportError(f"checkpoint '{checkpoint}' not found (looked at {', '.join(map(str, candidates))}); "
                      f"checkpoints of '{run}': {available}")


def load_exportable(path: Path) -> Exportable:
    """Load a checkpoint's policy and check it against its task as registered now."""
    try:
        state = load_checkpoint(path)
        policy = load_policy(path)
    except CheckpointError as error:
        raise ExportError(str(error)) from None
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ExportError(f"checkpoint '{path}' is incomplete or malformed ({type(error).__name__}: {error}); "
                          "it was not written by this toolkit's trainer") from None
    return prepare(policy, state.get("config"))


def prepare(policy: LoadedPolicy, config: Mapping | None = None) -> Exportable:
    """Check ``policy`` against its task and build the graph and metadata to export.

    ``config`` is the checkpoint's training config (``to_dict(TrainConfig)``); its
    ``pql.normalize_obs`` and ``pql.obs_clip`` decide how the actor saw observations.
    """
    task = task_of(policy)
    normalize, clip = _normalizer_settings(config, policy.obs_normalizer.clip)
    normalizer = policy.obs_normalizer if normalize else None
    if normalizer is not None:
        normalizer.clip = clip
    graph = PolicyGraph(policy.actor, normalizer).eval()
    try:
        metadata = PolicyMetadata.for_task(
            task, run_name=policy.run_name or _run_name(policy.checkpoint_path), training_step=int(policy.env_steps),
            toolkit_version=toolkit.__version__, task_overrides=policy.task_overrides,
            calibration=policy.calibration)
    except PolicyError as error:
        raise ExportError(f"cannot describe the policy: {error}") from None
    extra = {"checkpoint": Path(policy.checkpoint_path).name, "normalize_obs": str(normalize).lower(),
             "obs_clip": repr(float(clip))}
    return Exportable(policy=policy, graph=graph, metadata=metadata, extra_metadata=extra)


def task_of(policy: LoadedPolicy) -> Task:
    """The policy's task as registered now; refuses a policy whose layout or action size differ."""
    try:
        task = make_task(policy.task, **policy.task_overrides)
    except (TypeError, ValueError) as error:
        raise ExportError(f"checkpoint task '{policy.task}' (overrides {policy.task_overrides}) cannot be "
                          f"made: {error}") from None
    ours, theirs = policy.obs_layout, task.obs_layout
    if ours != theirs:
        raise ExportError(
            f"checkpoint observation layout (size {ours.size}, schema {ours.schema_hash()}) differs from task "
            f"'{policy.task}' as registered now (size {theirs.size}, schema {theirs.schema_hash()}): "
            f"checkpoint {_fields(ours)} vs task {_fields(theirs)}. Export with the toolkit version that trained "
            "it, or retrain")
    actor = policy.actor
    if actor.action_dim != task.robot.num_joints or actor.obs_dim != ours.size:
        raise ExportError(f"checkpoint actor maps {actor.obs_dim} -> {actor.action_dim}, task '{policy.task}' "
                          f"needs {ours.size} -> {task.robot.num_joints} (robot '{task.robot.name}')")
    return task


# --- export -----------------------------------------------------------------------------
def default_exporter() -> str:
    """"dynamo" (torch.export-based, torch's default) where onnxscript is installed, else the
    legacy "torchscript" exporter; both go through the same verification."""
    return "dynamo" if importlib.util.find_spec("onnxscript") is not None else "torchscript"


def to_onnx(graph: PolicyGraph, obs_size: int, opset: int = MIN_OPSET, exporter: str | None = None) -> onnx.ModelProto:
    """Trace ``graph`` with torch.onnx.export (batch dimension dynamic) at ``opset``.

    ``exporter``: "dynamo" or "torchscript" (default: :func:`default_exporter`).
    """
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old; use --opset {MIN_OPSET} or newer")
    exporter = exporter or default_exporter()
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter '{exporter}'; choose from {EXPORTERS}")
    example = torch.zeros(2, obs_size)  # batch 2: torch.export specialises a batch of 1
    names = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
    with _quiet() as captured, tempfile.TemporaryDirectory() as artifacts:
        try:
            if exporter == "dynamo":
                model = torch.onnx.export(
                    graph, (example,), None, dynamo=True, dynamic_shapes={"obs": {0: torch.export.Dim("batch")}},
                    external_data=False, optimize=True, artifacts_dir=artifacts, **names).model_proto
            else:
                buffer = io.BytesIO()
                torch.onnx.export(graph, (example,), buffer, dynamo=False,
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **names)
                model = onnx.load_model_from_string(buffer.getvalue())
        except Exception as error:  # the exporters raise many types; none is expected
            log = captured.getvalue().strip()
            raise ExportError(f"torch.onnx.export ({exporter}) failed: {error}"
                              + (f"\n{log[-2000:]}" if log else "")) from None
    got = _opset(model)
    if got != opset:
        raise ExportError(f"the {exporter} exporter produced opset {got}, not the requested {opset}; "
                          f"try --opset {got}")
    return model


def export_policy(source: Exportable, out: Path, *, opset: int = MIN_OPSET, rollout_steps: int = 50,
                  rollout_envs: int = 4, seed: int = 0, exporter: str | None = None) -> ExportReport:
    """Export ``source`` to ``out``, verified (see :func:`verify_file`) before it replaces ``out``."""
    out = Path(out)
    _check_writable(out)
    _check_rollout(rollout_steps, rollout_envs)
    exporter = exporter or default_exporter()
    model = to_onnx(source.graph, source.metadata.obs_size, opset, exporter)
    onnx.helper.set_model_props(model, {**encode_metadata(source.metadata), **source.extra_metadata,
                                        "exporter": f"torch {torch.__version__} torch.onnx.export ({exporter})"})
    model.producer_name, model.producer_version = "sim2real-pql export.onnx", toolkit.__version__
    model.doc_string = "raw observation (batch, O) -> action (batch, A) in [-1, 1]; see metadata_props"
    try:
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    except OSError as error:
        raise ExportError(f"cannot write into '{out.parent}': {error.strerror or error}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(model.SerializeToString())
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        report = verify_file(source, Path(tmp), opset=opset, rollout_steps=rollout_steps,
                             rollout_envs=rollout_envs, seed=seed)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    report.path = out
    return report


# --- verification ----------------------------------------------------------------------
def verify_file(source: Exportable, path: Path, *, opset: int | None = None, rollout_steps: int = 50,
                rollout_envs: int = 4, seed: int = 0) -> ExportReport:
    """Check the ONNX file ``path`` against ``source``; raises :class:`ExportError` with the numbers.

    onnx.checker (full), float32 only, the opset (``opset``, or >= MIN_OPSET), the metadata as read
    by the contract equal to ``source.metadata``, then onnxruntime vs torch on random and
    rollout observations (max abs difference <= TOLERANCE; batch 1 included).
    """
    try:
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
    except Exception as error:  # checker/protobuf errors
        raise ExportError(f"'{path}' fails onnx.checker: {error}") from None
    got = _opset(model)
    if (opset is not None and got != opset) or got < MIN_OPSET:
        raise ExportError(f"'{path}' has opset {got}, expected {opset or f'>= {MIN_OPSET}'}")
    _check_float32(model, path)
    exporter = next((p.value for p in model.metadata_props if p.key == "exporter"), "exporter unknown")
    runtime = _Runtime(model, path)
    if runtime.metadata != source.metadata:
        expected, found = encode_metadata(source.metadata), encode_metadata(runtime.metadata)
        keys = [key for key in expected if expected[key] != found[key]]
        raise ExportError(f"metadata of '{path}' differs from the checkpoint's in {keys}: "
                          + "; ".join(f"{k}: file {found[k][:80]!r} vs checkpoint {expected[k][:80]!r}" for k in keys))
    _check_rollout(rollout_steps, rollout_envs)
    rng = np.random.default_rng(seed)
    random_obs = random_observations(source.graph, source.metadata.obs_size, RANDOM_ROWS, rng)
    rollout_obs = rollout_observations(source, rollout_steps, rollout_envs, seed)
    diff_random = max(max_abs_diff(runtime, source.graph, random_obs),
                      max_abs_diff(runtime, source.graph, random_obs[:1]))
    diff_rollout = max_abs_diff(runtime, source.graph, rollout_obs)
    f32_error = float32_error(source.graph, np.concatenate([random_obs, rollout_obs]))
    tolerance = parity_tolerance(f32_error)
    if not (diff_random <= tolerance and diff_rollout <= tolerance):
        raise ExportError(f"onnxruntime and torch disagree on '{path}': max abs difference {diff_random:.3e} on "
                          f"{len(random_obs)} random observations, {diff_rollout:.3e} on {len(rollout_obs)} rollout "
                          f"observations (tolerance {tolerance:.1e}: {TOLERANCE:.0e}, or twice torch's float32 "
                          f"error {f32_error:.1e})")
    node_in, node_out = runtime.session.get_inputs()[0], runtime.session.get_outputs()[0]
    return ExportReport(path=path, checkpoint=source.policy.checkpoint_path, input_name=runtime.input_name,
                        input_shape=list(node_in.shape), output_name=runtime.output_name,
                        output_shape=list(node_out.shape), opset=got, diff_random=diff_random,
                        diff_rollout=diff_rollout, float32_error=f32_error, rows_random=len(random_obs) + 1,
                        rows_rollout=len(rollout_obs),
                        rollout=f"{rollout_envs} envs x {rollout_steps} steps", exporter=exporter,
                        metadata=runtime.metadata)


class _Runtime:
    """The written file on onnxruntime, read the way a deployment reads it: its metadata decoded
    by the contract, its one float32 (batch, O) input and (batch, A) output checked against it."""

    def __init__(self, model: onnx.ModelProto, path: Path) -> None:
        try:
            self.metadata = decode_entries(model.metadata_props, f"'{path}'")
        except PolicyError as error:
            raise ExportError(f"the metadata does not decode: {error}") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise ExportError(f"'{path}': onnxruntime cannot load the graph: {error}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        sizes = (self.metadata.obs_size, self.metadata.action_size)
        if len(inputs) != 1 or len(outputs) != 1 or [i.shape[1] for i in (*inputs, *outputs)] != list(sizes) \
                or any(isinstance(i.shape[0], int) for i in (*inputs, *outputs)):
            raise ExportError(f"'{path}': the graph is {[(i.name, i.shape) for i in inputs]} -> "
                              f"{[(o.name, o.shape) for o in outputs]}; the metadata implies one (batch, {sizes[0]}) "
                              f"input and one (batch, {sizes[1]}) output with a dynamic batch")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        (action,) = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(obs, np.float32)})
        return action


def max_abs_diff(runtime: _Runtime, graph: nn.Module, obs: np.ndarray) -> float:
    """max |onnxruntime(obs) - torch(obs)| (inf where either output is not finite)."""
    try:
        onnx_action = runtime(obs)
    except Exception as error:  # onnxruntime raises its own exception types
        raise ExportError(f"onnxruntime failed on {len(obs)} observations: {error}") from None
    with torch.no_grad():
        torch_action = graph(torch.from_numpy(obs)).numpy()
    diff = np.abs(onnx_action.astype(np.float64) - torch_action)
    return float(diff.max()) if np.isfinite(diff).all() else float("inf")


def float32_error(graph: nn.Module, obs: np.ndarray) -> float:
    """max |torch float32 - torch float64| of ``graph`` on ``obs``: how precise float32 is here."""
    with torch.no_grad():
        single = graph(torch.from_numpy(obs)).double()
        exact = copy.deepcopy(graph).double()(torch.from_numpy(obs).double())
    return float((single - exact).abs().max())


def parity_tolerance(float32_err: float) -> float:
    """The parity bound: TOLERANCE, or twice float32's own error where that is larger."""
    return max(TOLERANCE, 2.0 * float32_err)


def random_observations(graph: PolicyGraph, obs_size: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """float32 (rows, O) around the normalizer's statistics (standard normal without one): three
    quarters at their scale, a quarter at ten times it (beyond the normalizer's clip)."""
    z = rng.standard_normal((rows, obs_size))
    z[: rows // 4] *= 10.0
    norm = graph.normalizer
    if norm is None:
        return z.astype(np.float32)
    mean, std = norm.mean.double().numpy(), torch.sqrt(norm.var.double() + norm.eps).numpy()
    return (mean + std * z).astype(np.float32)


def rollout_observations(source: Exportable, steps: int, num_envs: int, seed: int) -> np.ndarray:
    """Observations (num_envs * (steps + 1), O) of the task stepped with the torch policy."""
    from toolkit.envs.vec_env import VecEnv  # the simulator is needed only here

    task_name, overrides = source.policy.task, source.policy.task_overrides
    rows = []
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", UserWarning)  # the env's own numpy -> torch conversions
        env = VecEnv(make_task(task_name, **overrides),
                     EnvConfig(task=task_name, num_envs=num_envs, nthread=1, seed=seed))
        try:
            obs, _ = env.reset(seed=seed)
            rows.append(obs.clone())
            for step in range(steps):
                try:
                    obs, *_ = env.step(source.graph(obs))
                except ValueError as error:
                    raise ExportError(f"rollout step {step}: the torch policy's action is unusable: {error}") from None
                rows.append(obs.clone())
        finally:
            env.close()
    return torch.cat(rows).numpy().astype(np.float32)


def check_policy_file(source: Exportable, path: Path, *, rollout_steps: int = 50, rollout_envs: int = 4,
                      seed: int = 0) -> ExportReport:
    """``--check-only``: verify an existing file against ``source`` (nothing is written)."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"'{path}' does not exist: nothing to check (drop --check-only to export)")
    return verify_file(source, path, rollout_steps=rollout_steps, rollout_envs=rollout_envs, seed=seed)


# --- command line -----------------------------------------------------------------------
@dataclass(frozen=True)
class Args:
    """Export a P-learner policy (observation normalizer + actor) to ONNX, with metadata, verified
    against torch on random and rollout observations."""

    run: tyro.conf.Positional[Path]
    """Run directory (its latest checkpoint is exported) or a checkpoint file."""
    out: Path
    """ONNX file to write (with --check-only: the file to verify)."""
    checkpoint: Path | None = None
    """Checkpoint to export instead of the latest: a path, or a file name in <run>/checkpoints/."""
    check_only: bool = False
    """Write nothing: re-verify the existing --out file against the checkpoint (metadata and parity)."""
    opset: int = MIN_OPSET
    """ONNX opset of the exported graph (>= 17; --check-only accepts any >= 17)."""
    rollout_steps: int = 50
    """Control steps of the task rollout whose observations the parity check uses (>= 1)."""
    rollout_envs: int = 4
    """Environments of that rollout."""
    seed: int = 0
    """Seed of the random and rollout observations."""
    exporter: Literal["auto", "dynamo", "torchscript"] = "auto"
    """torch.onnx.export flavour: auto is dynamo (torch.export-based) where onnxscript is installed,
    else the legacy TorchScript exporter."""


def run(args: Args) -> ExportReport:
    """Export (or check) as the command line asks; raises :class:`ExportError`."""
    source = load_exportable(resolve_checkpoint(args.run, args.checkpoint))
    common = dict(rollout_steps=args.rollout_steps, rollout_envs=args.rollout_envs, seed=args.seed)
    if args.check_only:
        return check_policy_file(source, args.out, **common)
    exporter = None if args.exporter == "auto" else args.exporter
    return export_policy(source, args.out, opset=args.opset, exporter=exporter, **common)


def main(argv: list[str] | None = None) -> int:
    return command(Args, run, lambda args, report: report.format(args.check_only), "python -m export.onnx", argv)


def command(args_type: type, action: Callable, render: Callable, prog: str, argv: list[str] | None = None) -> int:
    """A command's main: parse ``argv`` into ``args_type`` (tyro, ``--help`` from its docstrings),
    print ``render(args, action(args))`` and return 0; an :class:`ExportError` is printed as
    ``<prog>: error: ...`` on stderr (no traceback) and returns 1."""
    args = tyro.cli(args_type, args=argv, prog=prog)
    try:
        result = action(args)
    except ExportError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    print(render(args, result))
    return 0


# --- internals -----------------------------------------------------------------------
@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Silence the exporter's warnings, logs and prints (kept for an error message)."""
    captured = io.StringIO()
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            warnings.simplefilter("ignore")
            yield captured
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _normalizer_settings(config: Mapping | None, default_clip: float) -> tuple[bool, float]:
    pql = config.get("pql") if isinstance(config, Mapping) else None
    if not isinstance(pql, Mapping):
        return True, float(default_clip)
    return bool(pql.get("normalize_obs", True)), float(pql.get("obs_clip", default_clip))


def _check_writable(out: Path) -> None:
    parent = out.parent
    if out.is_dir():
        raise ExportError(f"--out '{out}' is a directory; name the .onnx file to write")
    if not parent.is_dir():
        raise ExportError(f"cannot write '{out}': directory '{parent}' does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write '{out}': directory '{parent}' is not writable")


def _check_rollout(steps: int, envs: int) -> None:
    if steps < 1 or envs < 1:
        raise ExportError(f"the parity check needs a rollout: --rollout-steps ({steps}) and --rollout-envs ({envs}) "
                          "must be >= 1")


def _check_float32(model: onnx.ModelProto, path: Path) -> None:
    """Refuse float64 anywhere (inputs, outputs, weights, constants, casts): the contract is float32."""
    double = onnx.TensorProto.DOUBLE
    for value in (*model.graph.input, *model.graph.output):
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ExportError(f"'{path}': graph value '{value.name}' is not float32")
    bad = [t.name for t in model.graph.initializer if t.data_type == double]
    for node in model.graph.node:
        for attr in node.attribute:
            if (attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == double) or \
                    (node.op_type == "Cast" and attr.name == "to" and attr.i == double):
                bad.append(node.name or node.op_type)
    if bad:
        raise ExportError(f"'{path}' computes in float64 at {bad[:5]}; the policy graph must be float32")


def _opset(model: onnx.ModelProto) -> int:
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), -1)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _run_name(checkpoint_path: str) -> str:
    path = Path(checkpoint_path)
    return path.parent.parent.name if path.parent.name == "checkpoints" else ""


def _fields(layout) -> str:
    return "[" + ", ".join(f"{name}:{size}" for name, size in layout.fields) + "]"


def _shape(shape: list) -> str:
    return "[" + ", ".join(str(dim) for dim in shape) + "]"


def _floats(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


if __name__ == "__main__":
    sys.exit(main())
