"""benchmarks.pql_vs_ppo: a tiny end-to-end run of both algorithms (CLI, JSON layout, PPO
really updating and being evaluated), the ratio arithmetic, and argument checks."""

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
import tyro
from PIL import Image

from benchmarks.pql_vs_ppo import Args, check_args, compare, main, plot_comparison, summarize

# A few seconds per algorithm on dclaw-pose with tiny networks; sequential PQL (same trainer and
# evaluation hook as the process placement, without the start-up of three processes).
TINY = ["--task", "dclaw-pose", "--target-success", "1.0", "--max-time-s", "4", "--eval-interval-s", "1.5",
        "--eval-envs", "4", "--pql-num-envs", "8", "--pql-mode", "sequential", "--pql.actor-hidden", "32", "32",
        "--pql.critic-hidden", "32", "32", "--pql.batch-size", "64", "--pql.replay-size", "20000",
        "--pql.warmup-steps", "4", "--ppo-num-envs", "16", "--ppo-steps-per-env", "8", "--json"]
POINT_KEYS = {"wall_time_s", "env_steps", "eval_success", "eval_return"}
RUN_KEYS = {"time_to_target_s", "env_steps_to_target", "final_eval_success", "best_eval_success", "curve",
            "num_envs", "wall_time_s", "env_steps", "setup_s", "stop_reason", "load_avg_before", "load_avg_after",
            "config"}


def test_tiny_run_reports_both_algorithms(capsys, tmp_path):
    main(tyro.cli(Args, args=[*TINY, "--plot", str(tmp_path / "curves.png")]))
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out  # --json: the result line only; training output went to stderr
    result = json.loads(out[0])
    assert {"task", "target_success", "max_time_s", "eval", "machine", "pql", "ppo", "ratio_ppo_over_pql",
            "env_steps_ratio_ppo_over_pql", "at_best_common_success"} <= set(result)
    assert result["task"] == "dclaw-pose" and result["target_success"] == 1.0
    assert result["eval"]["envs"] == 4 and result["eval"]["seed"] == 10_000
    assert result["machine"]["cpu_count"] >= 1 and result["machine"]["torch"]
    for name, num_envs in (("pql", 8), ("ppo", 16)):
        run = result[name]
        assert RUN_KEYS <= set(run), name
        assert run["num_envs"] == num_envs and run["env_steps"] > 0
        assert run["curve"] and all(set(point) == POINT_KEYS for point in run["curve"])
        times = [point["wall_time_s"] for point in run["curve"]]
        assert times == sorted(times) and 0 <= run["final_eval_success"] <= 1
        reached = run["time_to_target_s"] is not None
        assert reached == (run["stop_reason"] == "stop_at_success") == (run["env_steps_to_target"] is not None)
    ppo = result["ppo"]
    assert ppo["iterations"] >= 1 and ppo["env_steps"] == ppo["iterations"] * 16 * 8  # PPO updates happened
    assert ppo["curve"][-1]["env_steps"] == ppo["env_steps"] and ppo["eval_time_s"] > 0  # and were evaluated
    assert ppo["config"]["actor"]["hidden_dims"] == [32, 32] and ppo["reward_scale"] == 0.01
    assert result["pql"]["counters"]["v_updates"] > 0
    both = result["pql"]["time_to_target_s"] is not None and ppo["time_to_target_s"] is not None
    assert (result["ratio_ppo_over_pql"] is not None) == both
    assert result["plot"] == str(tmp_path / "curves.png")
    with Image.open(result["plot"]) as image:
        assert image.format == "PNG" and image.size == (550, 360)  # one panel


def test_plot_draws_both_curves_on_one_figure(tmp_path, monkeypatch):
    result = {"task": "dclaw-turn", "target_success": 0.8,
              "pql": {"num_envs": 64, "curve": _curve((10, 0.2), (20, 0.85))},
              "ppo": {"num_envs": 256, "curve": _curve((15, 0.1), (45, 0.5), (60, 0.9))}}
    drawn = {}
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, out, **kw: drawn.update(axes=fig.axes))
    plot_comparison(result, tmp_path / "c.png")
    (ax,) = drawn["axes"]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"PQL (64 envs)", "PPO (256 envs)", "target 0.8"}
    np.testing.assert_array_equal(lines["PPO (256 envs)"].get_xdata(), [15, 45, 60])
    np.testing.assert_array_equal(lines["PQL (64 envs)"].get_ydata(), [0.2, 0.85])
    assert ax.get_xlabel() == "wall time (s)" and ax.get_ylabel() == "eval success"


def _curve(*points):
    return [{"wall_time_s": t, "env_steps": 100 * t, "eval_success": s, "eval_return": 0.0} for t, s in points]


def test_ratios_at_the_target_and_at_the_best_common_success():
    pql_curve, ppo_curve = _curve((10, 0.2), (20, 0.85), (30, 0.9)), _curve((15, 0.1), (45, 0.5), (60, 0.9))
    pql = {**summarize(pql_curve, 0.8), "curve": pql_curve}
    ppo = {**summarize(ppo_curve, 0.8), "curve": ppo_curve}
    assert pql["time_to_target_s"] == 20 and pql["env_steps_to_target"] == 2000 and pql["best_eval_success"] == 0.9
    assert ppo["time_to_target_s"] == 60 and ppo["final_eval_success"] == 0.9
    result = compare(pql, ppo)
    assert result["ratio_ppo_over_pql"] == 3.0 and result["env_steps_ratio_ppo_over_pql"] == 3.0
    assert result["at_best_common_success"] == {"success": 0.9, "pql_time_s": 30, "ppo_time_s": 60,
                                                "ratio_ppo_over_pql": 2.0}

    # PPO misses the target: no target ratio, but the best success both reached (0.5) still compares.
    ppo_curve = _curve((15, 0.1), (45, 0.5))
    ppo = {**summarize(ppo_curve, 0.8), "curve": ppo_curve}
    assert ppo["time_to_target_s"] is None and ppo["env_steps_to_target"] is None
    result = compare(pql, ppo)
    assert result["ratio_ppo_over_pql"] is None and result["env_steps_ratio_ppo_over_pql"] is None
    assert result["at_best_common_success"] == {"success": 0.5, "pql_time_s": 20, "ppo_time_s": 45,
                                                "ratio_ppo_over_pql": 2.25}

    # Nothing learned by one of them: success 0 is no common ground.
    ppo_curve = _curve((15, 0.0))
    result = compare(pql, {**summarize(ppo_curve, 0.8), "curve": ppo_curve})
    assert result["at_best_common_success"]["ratio_ppo_over_pql"] is None


@pytest.mark.parametrize(("overrides", "message"), [
    ({"task": "dclaw-tunr"}, "unknown task 'dclaw-tunr'"),
    ({"target_success": 0.0}, "--target-success must be in"),
    ({"max_time_s": 0.0}, "--max-time-s must be > 0"),
    ({"ppo_num_envs": 0}, "--ppo-num-envs must be >= 1"),
    ({"algorithms": ()}, "--algorithms is empty"),
    ({"plot": "curves.txt"}, "must end in one of .png"),
    ({"plot": "/nonexistent-dir/curves.png"}, "directory '/nonexistent-dir' does not exist"),
])
def test_bad_arguments_are_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        check_args(Args(**overrides))
