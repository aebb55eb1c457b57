"""toolkit.progress: plain lines without control characters off a terminal (CI logs, files) that
carry the banner, time-left and summary facts; a live display on a terminal; the ETA arithmetic."""

import io
import os
import re

import pytest

from toolkit.progress import (
    CountProgress,
    TrainingProgress,
    eta_s,
    format_duration,
    is_interactive,
    training_time_left,
)

CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # everything below space but the newline, and DEL


def record(t: float, steps: int, eval_success=None, **extra) -> dict:
    """A metrics record as the trainer writes it (only the fields progress reads, plus noise)."""
    out = {"wall_time_s": t, "env_steps": steps, "env_steps_per_s": 2000.0, "v_updates_per_s": 40.0,
           "p_updates_per_s": 20.0, "critic_loss": 0.1, **extra}
    if eval_success is not None:
        out["eval_success"] = eval_success
    return out


def run_training(stream, **kwargs) -> TrainingProgress:
    progress = TrainingProgress(task="dclaw-turn", num_envs=64, placement="process", budget_s=1200,
                                run_dir="runs/turn", max_env_steps=50_000_000, stream=stream, **kwargs)
    progress.start()
    progress.update(record(10.0, 20_000))
    progress.update(record(20.0, 40_000, eval_success=0.25))
    progress.update(record(30.0, 60_000, eval_success=0.625))
    progress.update(record(40.0, 80_000, eval_success=0.5))
    progress.update(record(50.0, 100_000, eval_success=float("nan")))
    progress.finish("runs/turn/checkpoints/ckpt_000000100000.pt", "max_time_s")
    return progress


def test_training_output_off_a_terminal_is_plain_lines_with_the_facts():
    stream = io.StringIO()
    progress = run_training(stream)
    text = stream.getvalue()
    assert not progress.interactive and not CONTROL.search(text), repr(text)
    lines = text.splitlines()
    # banner: task, envs, placement, budget, run dir, the TensorBoard command
    assert "task dclaw-turn: 64 envs, placement process" in text
    assert "budget 20:00 (1200 s) or 50.0M env steps" in text and "run dir runs/turn" in text
    assert "tensorboard --logdir runs/turn" in text
    # one line per update: elapsed / budget, time left, rates, best eval so far
    live = [line for line in lines if line.startswith("[train]")]
    assert len(live) == 5
    assert live[0].startswith("[train] 0:10 / 20:00, left 19:50 | env 20.0k (2.0k/s) | V 40/s P 20/s | eval -")
    assert live[2].endswith("eval 0.62, best eval 0.62 at 0:30")
    assert live[3].endswith("eval 0.50, best eval 0.62 at 0:30")  # best is the best, not the last
    assert live[4].endswith("eval -, best eval 0.62 at 0:30")  # a non-finite eval is no evaluation
    # summary: best eval and when, the checkpoint, the command to run next
    assert "stopped (max_time_s) after 0:50, 100.0k env steps" in text
    assert "best eval success 0.62 at 0:30 (60.0k env steps)" in text
    assert "checkpoint runs/turn/checkpoints/ckpt_000000100000.pt" in text
    assert lines[-1].strip() == "next: python -m export.onnx runs/turn --out policy.onnx"
    assert progress.best == (0.625, 30.0, 60_000.0)


def test_a_file_is_not_a_terminal_and_a_pty_is(tmp_path, monkeypatch):
    with (tmp_path / "log.txt").open("w") as file:
        assert not is_interactive(file)
        run_training(file)
    assert not CONTROL.search((tmp_path / "log.txt").read_text())
    primary, secondary = os.openpty()
    with os.fdopen(secondary, "w") as tty:
        monkeypatch.setenv("TERM", "xterm")
        assert is_interactive(tty)
        monkeypatch.setenv("TERM", "dumb")
        assert not is_interactive(tty)
    os.close(primary)


def test_a_terminal_gets_a_live_display():
    stream = io.StringIO()
    progress = run_training(stream, interactive=True)
    text = stream.getvalue()
    assert progress.interactive and "\x1b[" in text  # redrawn in place
    plain = " ".join(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).split())  # the status wraps at 80 columns
    assert "best eval 0.62 at 0:30" in plain and "python -m export.onnx runs/turn --out policy.onnx" in plain


def test_a_resumed_run_counts_its_budget_from_its_start():
    stream = io.StringIO()
    progress = TrainingProgress(task="dclaw-turn", num_envs=64, placement="sequential", budget_s=600,
                                run_dir="runs/turn", tensorboard=False, start_wall_time_s=900.0, stream=stream)
    progress.start()
    progress.update(record(1000.0, 2_000_000, eval_success=0.9))
    progress.finish(None)
    text = stream.getvalue()
    assert "tensorboard" not in text
    assert "[train] 1:40 / 10:00, left 8:20" in text and "best eval 0.90 at 1:40" in text
    assert "checkpoint: none written" in text and "export.onnx" not in text


def test_count_progress_lines_and_eta():
    now = [100.0]
    stream = io.StringIO()
    progress = CountProgress("episodes", total=10, stream=stream, min_interval_s=5.0, clock=lambda: now[0])
    for episode in range(10):
        now[0] += 2.0  # each episode takes 2 s
        progress.advance(note=f"{episode + 1} successes")
        if episode == 2:
            assert progress.eta_s == pytest.approx(14.0)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert not CONTROL.search(stream.getvalue())
    # the first item, then at most one line per 5 s, and the last
    assert lines == ["episodes 1/10 (10%) | elapsed 0:02 | left 0:18 | 1 successes",
                     "episodes 4/10 (40%) | elapsed 0:08 | left 0:12 | 4 successes",
                     "episodes 7/10 (70%) | elapsed 0:14 | left 0:06 | 7 successes",
                     "episodes 10/10 (100%) | elapsed 0:20 | left 0:00 | 10 successes"]
    with pytest.raises(ValueError, match="total must be >= 0"):
        CountProgress("episodes", total=-1, stream=stream)


def test_eta_arithmetic():
    assert eta_s(3, 10, 30.0) == 70.0
    assert eta_s(0, 10, 5.0) is None and eta_s(10, 10, 50.0) == 0.0
    assert training_time_left(100.0, 1200.0) == 1100.0
    assert training_time_left(1300.0, 1200.0) == 0.0
    # the env-step limit comes first: 1M steps left at 10k/s = 100 s
    assert training_time_left(100.0, 1200.0, env_steps=1e6, max_env_steps=2e6, env_steps_per_s=1e4) == 100.0
    # no rate yet (or a non-finite one): the time budget alone
    assert training_time_left(100.0, 1200.0, env_steps=1e6, max_env_steps=2e6, env_steps_per_s=None) == 1100.0
    assert training_time_left(100.0, 1200.0, env_steps=1e6, max_env_steps=2e6, env_steps_per_s=float("nan")) == 1100.0
    assert [format_duration(s) for s in (0, 59.6, 75, 3725, None, float("inf"))] == \
        ["0:00", "1:00", "1:15", "1:02:05", "-", "-"]
