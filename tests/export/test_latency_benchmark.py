"""benchmarks/onnx_latency.py: runs end to end on a tiny budget and prints the documented JSON."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from benchmarks import onnx_latency
from tests.export.helpers import make_checkpoint


def test_benchmark_prints_latencies_and_ratio(tmp_path):
    make_checkpoint(tmp_path / "run", hidden=(16,))
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = onnx_latency.main(["--checkpoint", str(tmp_path / "run"), "--iterations", "60", "--warmup", "2",
                                 "--exporter", "torchscript"])
    assert code == 0
    result = json.loads(out.getvalue())
    assert (result["batch"], result["iterations"], result["hidden"], result["obs_size"]) == (1, 60, [16], 30)
    for side in ("onnxruntime_us", "onnxruntime_session_us", "torch_eager_us"):
        assert 0 < result[side]["p50"] <= result[side]["p99"]
    assert result["ratio_p50"] == pytest.approx(result["torch_eager_us"]["p50"] / result["onnxruntime_us"]["p50"],
                                                 rel=0.02)


def test_benchmark_help_and_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        onnx_latency.main(["--help"])
    assert exit_info.value.code == 0 and "--checkpoint" in capsys.readouterr().out
    assert onnx_latency.main(["--task", "dclaw-trun"]) == 1
    assert "unknown task 'dclaw-trun'" in capsys.readouterr().err
