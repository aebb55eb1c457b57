"""Exported policies: read an ONNX policy file and run it with onnxruntime.

An exported policy (``python -m export.onnx``) is one ONNX graph, raw observation ``(B, O)``
float32 in -> action ``(B, A)`` float32 in [-1, 1] out (the observation normalizer is inside the
graph), with a dynamic batch dimension. Its ``metadata_props`` hold a
:class:`toolkit.contract.policy.PolicyMetadata` (see that module for the keys). This module
imports numpy, onnx, onnxruntime and the torch-free contract only: the deployment runner uses it
on machines without torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from deploy.errors import Interrupted
from toolkit.contract.policy import PolicyError, PolicyMetadata, decode_entries


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
        except Interrupted:  # a signal that arrived during inference is not the policy's failure
            raise
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
    return decode_entries(model.metadata_props, str(path))


__all__ = ["OnnxPolicy", "PolicyError", "PolicyMetadata", "load_policy", "read_metadata"]
