"""ONNX policies without training: a random tanh MLP with valid metadata for a task.

For the jitter benchmark, dry runs of the deployment wiring and tests that need a policy with
a particular behaviour (saturated, NaN-producing, mismatching metadata). The graph is built with
``onnx.helper`` and its metadata written by :func:`toolkit.contract.policy.encode_metadata`, the function
``export.onnx`` uses, so :func:`deploy.policy.load_policy` reads it like an exported file.
A synthetic policy is not trained: never expect it to solve the task.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import toolkit
from toolkit.contract.policy import PolicyMetadata, encode_metadata
from toolkit.contract.robot import RobotSpec
from toolkit.contract.task import Task

_ROBOT_FIELDS = {f.name for f in dataclasses.fields(RobotSpec)}


def task_metadata(task: Task, task_overrides: dict | None = None, **replace) -> PolicyMetadata:
    """The metadata an export of a policy for ``task`` carries; ``replace`` alters fields, of the
    metadata or of its robot (``joint_low=...``; ``robot_name=...`` renames the robot)."""
    robot_changes = {name: replace.pop(name) for name in list(replace) if name in _ROBOT_FIELDS - {"name"}}
    if "robot_name" in replace:
        robot_changes["name"] = replace.pop("robot_name")
    metadata = PolicyMetadata.for_task(task, run_name="synthetic", training_step=0,
                                       toolkit_version=toolkit.__version__, task_overrides=task_overrides)
    if robot_changes:
        replace["robot"] = dataclasses.replace(task.robot, **robot_changes)
    return dataclasses.replace(metadata, **replace) if replace else metadata


def synthetic_policy(path: str | Path, metadata: PolicyMetadata, *, hidden: int = 64, seed: int = 0,
                     weight_scale: float = 1.0, bias: float | np.ndarray = 0.0, nan_action: bool = False) -> Path:
    """Write ``action = tanh(W2 tanh(W1 obs + b1) + b2 + bias)`` to ``path`` (float32, dynamic batch).

    Args:
        metadata: what the file says about itself (:func:`task_metadata`).
        weight_scale: multiplies the random weights (large: saturated, bang-bang actions).
        bias: added before the output tanh (large: constant actions pushing to the limits).
        nan_action: add ``sqrt(-1)`` to the output, i.e. a policy that emits NaN.
    """
    rng = np.random.default_rng(seed)
    obs_size, action_size = metadata.obs_size, metadata.action_size
    w1 = rng.normal(0, weight_scale / np.sqrt(obs_size), (obs_size, hidden)).astype(np.float32)
    w2 = rng.normal(0, weight_scale / np.sqrt(hidden), (hidden, action_size)).astype(np.float32)
    b2 = np.broadcast_to(np.asarray(bias, dtype=np.float32), (action_size,)).copy()
    initializers = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.zeros(hidden, np.float32), "b1"),
                    numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")]
    nodes = [helper.make_node("Gemm", ["obs", "w1", "b1"], ["h"]), helper.make_node("Tanh", ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["z"])]
    if nan_action:
        initializers.append(numpy_helper.from_array(np.full(1, -1.0, np.float32), "minus_one"))
        nodes += [helper.make_node("Tanh", ["z"], ["t"]), helper.make_node("Sqrt", ["minus_one"], ["nan"]),
                  helper.make_node("Add", ["t", "nan"], ["action"])]
    else:
        nodes.append(helper.make_node("Tanh", ["z"], ["action"]))
    graph = helper.make_graph(
        nodes, "synthetic_policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", obs_size])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", action_size])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="deploy.testing")
    helper.set_model_props(model, encode_metadata(metadata))
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    onnx.save(model, path)
    return path
