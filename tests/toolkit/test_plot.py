"""toolkit.plot: eval curves of run directories from hand-made metrics.jsonl files (the
RunLogger format), the figure written by the CLI, and clear errors for bad input."""

import math

import matplotlib
import numpy as np
import pytest
from PIL import Image

from toolkit.logging import RunLogger
from toolkit.plot import EvalCurve, PlotError, draw_curves, main, read_eval_curve

matplotlib.use("Agg")


def write_run(run_dir, evals, torn_tail=False):
    """A run dir whose metrics.jsonl has one record per 10 s: no eval for the first two, then each
    (success, return) of ``evals`` logged twice (the trainer repeats an eval until the next)."""
    run_dir.mkdir()
    logger = RunLogger(run_dir, tensorboard=False)  # the trainer's writer (non-finite -> null)
    t = 0
    for _ in range(2):
        t += 10
        logger.log({"env_steps": 640 * t, "wall_time_s": float(t), "episode_return": -5.0, "episode_success": 0.0})
    for success, ret in evals:
        for _ in range(2):
            t += 10
            logger.log({"env_steps": 640 * t, "wall_time_s": float(t), "episode_return": 1.0,
                        "episode_success": 0.5, "eval_success": success, "eval_return": ret, "eval_length": 40.0})
    logger.close()
    if torn_tail:
        with (run_dir / "metrics.jsonl").open("a") as file:
            file.write('{"env_steps": 99999, "wall_ti')
    return run_dir


def test_two_runs_make_a_figure(tmp_path, capsys):
    a = write_run(tmp_path / "turn-a", [(0.1, -3.0), (0.5, 2.0), (0.9, 8.5)])
    b = write_run(tmp_path / "turn-b", [(0.0, float("nan")), (0.3, 1.0)], torn_tail=True)
    curve = read_eval_curve(a)
    assert curve.label == "turn-a" and len(curve) == 3  # repeats are one evaluation, pre-eval records skipped
    np.testing.assert_array_equal(curve.wall_time_s, [30.0, 50.0, 70.0])
    np.testing.assert_array_equal(curve.env_steps, [640 * 30, 640 * 50, 640 * 70])
    np.testing.assert_array_equal(curve.eval_success, [0.1, 0.5, 0.9])
    assert curve.best() == (0.9, 70.0, 640 * 70)
    other = read_eval_curve(b)  # the torn last line is left out; the null return is NaN
    assert len(other) == 2 and math.isnan(other.eval_return[0]) and other.eval_return[1] == 1.0

    out = tmp_path / "curves.png"
    assert main([str(a), str(b), "--out", str(out), "--target-success", "0.8"]) == 0
    printed = capsys.readouterr().out
    assert "turn-a: 3 evaluations, best success 0.90 at 70s (44.8k env steps)" in printed and f"wrote {out}" in printed
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1100, 720)  # 2 x 2 panels
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels != 255).any(axis=-1).mean() > 0.05  # something was drawn


def test_draw_curves_puts_each_run_on_the_axes():
    import matplotlib.pyplot as plt

    curves = [EvalCurve.from_points("pql", [{"wall_time_s": 10, "env_steps": 100, "eval_success": 0.2,
                                             "eval_return": 1.0},
                                            {"wall_time_s": 20, "env_steps": 200, "eval_success": None,
                                             "eval_return": 2.0}]),
              EvalCurve.from_points("ppo", [{"wall_time_s": 15, "env_steps": 900, "eval_success": 0.1,
                                             "eval_return": 0.0}])]
    fig, ax = plt.subplots()
    draw_curves(ax, curves, x="env_steps", metric="eval_success", target=0.8)
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["pql", "ppo", "target 0.8"]
    np.testing.assert_array_equal(lines[0].get_xdata(), [100, 200])
    np.testing.assert_array_equal(lines[0].get_ydata(), [0.2, np.nan])
    assert ax.get_xlabel() == "env steps" and ax.get_ylabel() == "eval success"
    with pytest.raises(PlotError, match="metric one of"):
        draw_curves(ax, curves, metric="loss")
    plt.close(fig)


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(PlotError, match="run directory '.*missing' does not exist"):
        read_eval_curve(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PlotError, match="has no metrics.jsonl"):
        read_eval_curve(tmp_path / "empty")
    early = write_run(tmp_path / "early", [])
    with pytest.raises(PlotError, match=r"has no evaluation yet \(2 records, none with eval_success\)"):
        read_eval_curve(early)
    broken = write_run(tmp_path / "broken", [(0.5, 1.0)])
    lines = (broken / "metrics.jsonl").read_text().splitlines()
    lines.insert(1, "not json")
    (broken / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(PlotError, match=r"metrics.jsonl:2 is not a JSON object"):
        read_eval_curve(broken)
    good = write_run(tmp_path / "good", [(0.5, 1.0)])
    assert main([str(good), "--out", str(tmp_path / "curves.txt")]) == 2
    assert "must end in one of .png" in capsys.readouterr().err
    assert main([str(good), "--out", str(tmp_path / "nowhere" / "c.png")]) == 2
    assert "directory" in capsys.readouterr().err
    assert main([str(good), str(early), "--out", str(tmp_path / "c.png")]) == 2  # every run must have evals
    assert "no evaluation yet" in capsys.readouterr().err and not (tmp_path / "c.png").exists()
    assert main([]) == 2 and "at least one run directory" in capsys.readouterr().err
