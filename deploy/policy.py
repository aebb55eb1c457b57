"""Exported policies: read the metadata of an ONNX policy file and run it with onnxruntime.

An exported policy (``python -m export.onnx``) is one ONNX graph, raw observation ``(B, O)``
float32 in -> action ``(B, A)`` float32 in [-1, 1] out (the observation normalizer is inside the
graph), with a dynamic batch dimension. Its ``metadata_props`` describe it; every value is a
string, JSON where structured:

============================  ==============================================================
key                           value
============================  ==============================================================
format                        ``METADATA_FORMAT`` (bumped on incompatible changes)
robot, task                   robot id ("dclaw") and registered task name ("dclaw-turn")
task_overrides                JSON object of the task's dataclass fields set for training
joint_names                   JSON list, actuator order (the action's order)
action_scale                  JSON list (rad per unit action per control step)
joint_low, joint_high         JSON lists (rad)
default_joint_targets         JSON list (rad), the joint targets at reset
control_dt                    JSON number (s)
obs_layout                    JSON ``[[name, size], ...]`` in observation order (ObsLayout)
schema_hash                   ``ObsLayout.schema_hash()`` of obs_layout
toolkit_version, run_name     strings
training_step                 JSON integer: environment steps of the checkpoint
============================  ==============================================================

Writers may add keys; readers ignore keys they do not know. This module imports numpy, onnx,
onnxruntime and the torch-free ``toolkit.contract.obs_layout`` only: the deployment runner uses it on
machines without torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from toolkit.contract.obs_layout import ObsLayout

METADATA_FORMAT = "sim2real-pql-onnx-policy/1"

_ARRAY_FIELDS = ("action_scale", "joint_low", "joint_high", "default_joint_targets")
_STRING_FIELDS = ("robot", "task", "schema_hash", "toolkit_version", "run_name")


class PolicyError(RuntimeError):
    """A policy file that cannot be used, or an observation the policy cannot be applied to."""


@dataclass(frozen=True)
class PolicyMetadata:
    """What an exported policy says about itself (see the module docstring for the file keys).

    Construction validates every field and raises :class:`PolicyError` naming the field: arrays
    are (num_joints,) finite float64 (stored read-only), limits ordered, the default targets
    inside them, and ``schema_hash`` equal to ``obs_layout.schema_hash()``. ``task_overrides``
    is stored as its JSON round trip (tuples become lists), as a reader of the file sees it.
    """

    robot: str
    task: str
    task_overrides: dict
    joint_names: tuple[str, ...]
    action_scale: np.ndarray
    joint_low: np.ndarray
    joint_high: np.ndarray
    default_joint_targets: np.ndarray
    control_dt: float
    obs_layout: ObsLayout
    schema_hash: str
    toolkit_version: str
    run_name: str
    training_step: int

    def __post_init__(self) -> None:
        for key in _STRING_FIELDS:
            if not isinstance(getattr(self, key), str):
                raise PolicyError(f"metadata '{key}' must be a string, got {getattr(self, key)!r}")
        for key in ("robot", "task"):
            if not getattr(self, key):
                raise PolicyError(f"metadata '{key}' is empty")
        if not isinstance(self.task_overrides, dict):
            raise PolicyError(f"metadata 'task_overrides' must be a JSON object, got {self.task_overrides!r}")
        try:
            overrides = json.loads(json.dumps(self.task_overrides, sort_keys=True, default=_json_default))
        except (TypeError, ValueError) as error:
            raise PolicyError(f"metadata 'task_overrides' is not JSON-serialisable: {error}") from error
        object.__setattr__(self, "task_overrides", overrides)

        names = self.joint_names
        if isinstance(names, str) or not all(isinstance(name, str) and name for name in names):
            raise PolicyError(f"metadata 'joint_names' must be a list of non-empty strings, got {names!r}")
        names = tuple(names)
        if not names or len(set(names)) != len(names):
            raise PolicyError(f"metadata 'joint_names' must be unique and non-empty, got {list(names)}")
        object.__setattr__(self, "joint_names", names)
        for key in _ARRAY_FIELDS:
            object.__setattr__(self, key, _joint_array(key, getattr(self, key), len(names)))
        if np.any(self.joint_low >= self.joint_high):
            raise PolicyError("metadata 'joint_low' must lie below 'joint_high' for every joint")
        if np.any(self.default_joint_targets < self.joint_low) or np.any(self.default_joint_targets > self.joint_high):
            raise PolicyError("metadata 'default_joint_targets' lie outside the joint limits")
        if np.any(self.action_scale <= 0):
            raise PolicyError(f"metadata 'action_scale' must be positive, got {self.action_scale.tolist()}")

        if isinstance(self.control_dt, bool) or not isinstance(self.control_dt, (int, float)) \
                or not math.isfinite(self.control_dt) or self.control_dt <= 0:
            raise PolicyError(f"metadata 'control_dt' must be a positive number of seconds, got {self.control_dt!r}")
        object.__setattr__(self, "control_dt", float(self.control_dt))
        if isinstance(self.training_step, bool) or not isinstance(self.training_step, int) or self.training_step < 0:
            raise PolicyError(f"metadata 'training_step' must be an integer >= 0, got {self.training_step!r}")
        if not isinstance(self.obs_layout, ObsLayout):
            raise PolicyError(f"metadata 'obs_layout' must be an ObsLayout, got {type(self.obs_layout).__name__}")
        if self.schema_hash != self.obs_layout.schema_hash():
            raise PolicyError(f"metadata 'schema_hash' {self.schema_hash!r} does not match the observation layout "
                              f"(its hash is {self.obs_layout.schema_hash()!r}): the file was altered")

    @property
    def obs_size(self) -> int:
        """Length of the observation vector the policy takes."""
        return self.obs_layout.size

    @property
    def action_size(self) -> int:
        """Length of the action vector the policy returns (one per joint)."""
        return len(self.joint_names)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PolicyMetadata):
            return NotImplemented
        return all(np.array_equal(getattr(self, f.name), getattr(other, f.name)) if f.name in _ARRAY_FIELDS
                   else getattr(self, f.name) == getattr(other, f.name) for f in fields(self))

    def summary(self) -> str:
        """One line for logs: robot, task, run, step, sizes, layout and hash."""
        layout = ", ".join(f"{name}:{size}" for name, size in self.obs_layout.fields)
        overrides = f" {json.dumps(self.task_overrides, sort_keys=True)}" if self.task_overrides else ""
        return (f"robot={self.robot} task={self.task}{overrides} run={self.run_name or '-'} "
                f"step={self.training_step} joints={self.action_size} control_dt={self.control_dt:g}s "
                f"obs={self.obs_size} [{layout}] schema={self.schema_hash} toolkit={self.toolkit_version}")


def encode_metadata(metadata: PolicyMetadata) -> dict[str, str]:
    """The ``metadata_props`` strings of ``metadata`` (the inverse of :func:`read_metadata`)."""
    out = {"format": METADATA_FORMAT}
    for f in fields(metadata):
        value = getattr(metadata, f.name)
        if f.name in _STRING_FIELDS:
            out[f.name] = value
        elif f.name == "obs_layout":
            out[f.name] = value.to_json()
        elif f.name in _ARRAY_FIELDS:
            out[f.name] = json.dumps(value.tolist())
        elif f.name == "joint_names":
            out[f.name] = json.dumps(list(value))
        else:  # task_overrides, control_dt, training_step
            out[f.name] = json.dumps(value, sort_keys=True)
    return out


def decode_metadata(props: Mapping[str, str]) -> PolicyMetadata:
    """Parse and validate ``metadata_props`` (key -> string); :class:`PolicyError` names the bad key."""
    if "format" not in props:
        raise PolicyError("metadata key 'format' is missing: not a policy written by export.onnx")
    if props["format"] != METADATA_FORMAT:
        raise PolicyError(f"metadata 'format' is {props['format']!r}; this reader understands {METADATA_FORMAT!r}")
    values = {}
    for f in fields(PolicyMetadata):
        if f.name not in props:
            raise PolicyError(f"metadata key '{f.name}' is missing")
        text = props[f.name]
        if f.name in _STRING_FIELDS:
            values[f.name] = text
            continue
        try:
            values[f.name] = ObsLayout.from_json(text) if f.name == "obs_layout" else json.loads(text)
        except (TypeError, ValueError) as error:
            raise PolicyError(f"metadata '{f.name}' cannot be parsed ({error}): {text[:200]!r}") from error
    return PolicyMetadata(**values)


def read_metadata(path) -> PolicyMetadata:
    """Read and validate the metadata of the ONNX policy file ``path``.

    Raises :class:`PolicyError` naming the file and the missing or inconsistent key.
    """
    return _metadata_of(_parse(_read_bytes(path), path), path)


class OnnxPolicy:
    """An exported policy on an onnxruntime session: ``policy(obs) -> action``.

    Attributes:
        metadata: the file's :class:`PolicyMetadata`.
        input_name, output_name: the graph's observation input and action output names.
        session: the onnxruntime ``InferenceSession``.
    """

    def __init__(self, session: ort.InferenceSession, metadata: PolicyMetadata, source: str = "policy") -> None:
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise PolicyError(f"{source}: the graph must have one input and one output, has "
                              f"{[i.name for i in inputs]} -> {[o.name for o in outputs]}")
        for kind, node, size, key in (("input", inputs[0], metadata.obs_size, "obs_layout"),
                                      ("output", outputs[0], metadata.action_size, "joint_names")):
            shape = list(node.shape)
            if node.type != "tensor(float)" or len(shape) != 2:
                raise PolicyError(f"{source}: graph {kind} '{node.name}' is {node.type} {shape}; expected float32 "
                                  "(batch, size)")
            if isinstance(shape[0], int):
                raise PolicyError(f"{source}: graph {kind} '{node.name}' has a fixed batch size {shape[0]}; "
                                  "expected a dynamic batch dimension")
            if shape[1] != size:
                raise PolicyError(f"{source}: graph {kind} '{node.name}' has size {shape[1]} but metadata "
                                  f"'{key}' implies {size}")
        self.session = session
        self.metadata = metadata
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.source = source
        self._slices = metadata.obs_layout.slices()
        self._sizes = (metadata.obs_size, metadata.action_size)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Actions (B, A) float32 in [-1, 1] for raw observations (B, O) (cast to float32).

        Raises :class:`PolicyError` on a non-2D input, a wrong observation size, an empty batch,
        NaN/inf observations (naming the rows and fields) or a non-finite action.
        """
        if isinstance(obs, np.ndarray) and obs.dtype == np.float32 and obs.flags.c_contiguous:
            x = obs  # the runner's case: no copy, no conversion
        else:
            try:
                with np.errstate(over="ignore"):  # values beyond float32 become inf, refused below
                    x = np.ascontiguousarray(obs, dtype=np.float32)
            except (TypeError, ValueError) as error:
                raise PolicyError(f"observation cannot be converted to float32: {error}") from error
        size, action_size = self._sizes
        if x.ndim != 2:
            raise PolicyError(f"observation must be 2-D (batch, {size}), got shape {x.shape}")
        if x.shape[1] != size:
            raise PolicyError(f"observation has size {x.shape[1]}, the policy takes {size} "
                              f"({', '.join(f'{n}:{s}' for n, s in self.metadata.obs_layout.fields)})")
        if x.shape[0] == 0:
            raise PolicyError("observation batch is empty")
        finite = np.isfinite(x)
        if not finite.all():
            rows = np.flatnonzero(~finite.all(axis=1))
            names = [name for name, part in self._slices.items() if not finite[:, part].all()]
            raise PolicyError(f"observation contains NaN or inf in rows {rows[:10].tolist()}, fields {names}")
        try:
            (action,) = self.session.run([self.output_name], {self.input_name: x})
        except Exception as error:  # onnxruntime raises its own exception types
            raise PolicyError(f"{self.source}: onnxruntime failed: {error}") from error
        if action.shape != (x.shape[0], action_size) or not np.isfinite(action).all():
            raise PolicyError(f"{self.source}: the policy returned a non-finite or misshapen action {action.shape}")
        return action

    def __repr__(self) -> str:
        return f"OnnxPolicy({self.source!r}, {self.input_name}[B,{self.metadata.obs_size}] -> " \
               f"{self.output_name}[B,{self.metadata.action_size}])"


def load_policy(path, *, intra_op_threads: int = 1) -> OnnxPolicy:
    """Open the ONNX policy ``path`` on a CPU onnxruntime session and validate it.

    ``intra_op_threads`` is onnxruntime's intra-op thread count (1 by default: deterministic
    latency beside a control loop; 0 lets onnxruntime pick). Raises :class:`PolicyError`.
    """
    if intra_op_threads < 0:
        raise PolicyError(f"intra_op_threads must be >= 0, got {intra_op_threads}")
    data = _read_bytes(path)
    metadata = _metadata_of(_parse(data, path), path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        raise PolicyError(f"{path}: onnxruntime cannot load the graph: {error}") from error
    return OnnxPolicy(session, metadata, source=str(path))


# --- internals -----------------------------------------------------------------------
def _read_bytes(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise PolicyError(f"cannot read policy file '{path}': {error.strerror or error}") from error


def _parse(data: bytes, path) -> onnx.ModelProto:
    try:
        model = onnx.load_model_from_string(data)
    except Exception as error:  # protobuf DecodeError and friends
        raise PolicyError(f"'{path}' is not an ONNX file: {error}") from error
    if not model.graph.node:
        raise PolicyError(f"'{path}' is not an ONNX policy (empty graph)")
    return model


def _metadata_of(model: onnx.ModelProto, path) -> PolicyMetadata:
    props: dict[str, str] = {}
    for entry in model.metadata_props:
        if entry.key in props:
            raise PolicyError(f"{path}: metadata key '{entry.key}' appears twice: the file was altered")
        props[entry.key] = entry.value
    try:
        return decode_metadata(props)
    except PolicyError as error:
        raise PolicyError(f"{path}: {error}") from None


def _joint_array(key: str, value, n: int) -> np.ndarray:
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise PolicyError(f"metadata '{key}' must be a list of numbers: {error}") from error
    if array.shape != (n,) or not np.isfinite(array).all():
        raise PolicyError(f"metadata '{key}' must hold {n} finite numbers (one per joint), got {value!r}")
    array.setflags(write=False)
    return array


def _json_default(value):
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON-serialisable")
