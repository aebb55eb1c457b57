"""Progress a person reads at a glance: a training run's banner, live line and summary, and a
count-down for long command-line work (episodes, calibration generations).

    progress = TrainingProgress(task="dclaw-turn", num_envs=64, placement="process", budget_s=1200,
                                run_dir="runs/turn")
    progress.start()                       # banner: task, envs, placement, budget, run dir, tensorboard command
    progress.update(record)                # per log interval: a metrics record (env_steps, wall_time_s, rates, eval_*)
    progress.finish(checkpoint, "max_time_s")  # best eval and when, the checkpoint, the export command

    with CountProgress("episodes", total=10) as progress:
        for episode in range(10):
            ...
            progress.advance(note=f"{successes}/{episode + 1} successes")

On a terminal (``stream.isatty()``) the live parts are a rich progress display that redraws in
place; anything else printed meanwhile scrolls above it. Anywhere else (CI logs, files, pipes)
every update is one plain line of text: no colour, no cursor movement, no ``\\r``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO


# --- arithmetic -------------------------------------------------------------------------------
def format_duration(seconds: float | None) -> str:
    """``75`` -> "1:15", ``3725`` -> "1:02:05"; None or non-finite -> "-"."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta_s(done: float, total: float, elapsed_s: float) -> float | None:
    """Seconds left for ``total`` items when ``done`` took ``elapsed_s`` at a constant rate
    (None before the first item is done)."""
    if done <= 0 or elapsed_s < 0:
        return None
    return max(0.0, elapsed_s / done * (total - done))


def training_time_left(elapsed_s: float, budget_s: float, env_steps: float | None = None,
                       max_env_steps: float | None = None, env_steps_per_s: float | None = None) -> float:
    """Seconds until the first stop limit: the time budget, or ``max_env_steps`` at the current
    env-step rate (when both are known and the rate is positive)."""
    left = max(0.0, budget_s - elapsed_s)
    if (env_steps is not None and max_env_steps is not None and env_steps_per_s
            and math.isfinite(env_steps_per_s) and env_steps_per_s > 0):
        left = min(left, max(0.0, (max_env_steps - env_steps) / env_steps_per_s))
    return left


def is_interactive(stream: IO[str]) -> bool:
    """True when ``stream`` is a terminal that can redraw a line (not a file, pipe or TERM=dumb)."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
    return bool(tty) and os.environ.get("TERM", "") != "dumb"


def _si(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}"


def _number(record: Mapping, key: str) -> float | None:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


class _Output:
    """Where lines and the live display go: plain lines, or rich on a terminal."""

    def __init__(self, stream: IO[str] | None, interactive: bool | None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.interactive = is_interactive(self.stream) if interactive is None else interactive
        self._console = None
        if self.interactive:
            from rich.console import Console

            self._console = Console(file=self.stream, force_terminal=True, highlight=False)

    def lines(self, lines: list[str], title: str | None = None) -> None:
        """A block of facts: a framed panel on a terminal, plain lines elsewhere."""
        if self._console is not None:
            from rich.panel import Panel
            from rich.text import Text

            self._console.print(Panel(Text("\n".join(lines)), title=title, title_align="left", expand=False))
            return
        if title:
            self.stream.write(f"{title}:\n")
        for line in lines:
            self.stream.write(f"  {line}\n" if title else f"{line}\n")
        self.stream.flush()

    def line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def live(self, description: str, total: float) -> _LiveLine:
        """A live bar + status line redrawn in place (terminal only); started."""
        return _LiveLine(self._console, description, total)


class _LiveLine:
    """rich Live of "description [bar]" over a status text that wraps on narrow terminals; prints
    made meanwhile (the trainer's own lines) scroll above it."""

    def __init__(self, console, description: str, total: float) -> None:
        from rich.live import Live

        self.description, self.total, self.completed, self.status = description, total, 0.0, ""
        self._live = Live(self._renderable(), console=console, auto_refresh=False, redirect_stdout=True,
                          redirect_stderr=True)
        self._live.start()

    def _renderable(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        head = Table.grid(padding=(0, 1))
        head.add_row(Text(self.description, style="bold"),
                     ProgressBar(total=max(self.total, 1e-9), completed=self.completed, width=30))
        return Group(head, Text(self.status))

    def update(self, completed: float, status: str) -> None:
        self.completed, self.status = completed, status
        self._live.update(self._renderable(), refresh=True)

    def stop(self) -> None:
        self._live.stop()


# --- training ---------------------------------------------------------------------------------
class TrainingProgress:
    """Banner, live line and end summary of one training run.

    Args:
        task: the task's name.
        num_envs: training envs.
        placement: where the roles run ("process", "sequential", "ray").
        budget_s: this invocation's time budget (``--max-time-s``).
        run_dir: the run directory.
        max_env_steps: the env-step limit (``--max-env-steps``; None: none); time left counts it too.
        tensorboard: whether TensorBoard events are written (the banner names the command then).
        start_wall_time_s: ``wall_time_s`` at the start of this invocation (a resumed run's records
            carry the earlier time; the budget counts from here).
        stream: where to write (default ``sys.stdout`` at construction).
        interactive: force the live display on or off (default: whether ``stream`` is a terminal).
    """

    def __init__(self, *, task: str, num_envs: int, placement: str, budget_s: float, run_dir: str | Path,
                 max_env_steps: int | None = None, tensorboard: bool = True, start_wall_time_s: float = 0.0,
                 stream: IO[str] | None = None, interactive: bool | None = None) -> None:
        self.task, self.num_envs, self.placement = task, num_envs, placement
        self.budget_s, self.max_env_steps = float(budget_s), max_env_steps
        self.run_dir, self.tensorboard = Path(run_dir), tensorboard
        self.start_wall_time_s = float(start_wall_time_s)
        self._out = _Output(stream, interactive)
        self._live = None
        #: (eval success, wall_time_s, env_steps) of the best evaluation so far (None: none yet).
        self.best: tuple[float, float, float] | None = None
        self.last: Mapping = {}

    @property
    def interactive(self) -> bool:
        return self._out.interactive

    def banner_lines(self) -> list[str]:
        steps = f" or {_si(self.max_env_steps)} env steps" if self.max_env_steps else ""
        lines = [f"task {self.task}: {self.num_envs} envs, placement {self.placement}",
                 f"budget {format_duration(self.budget_s)} ({self.budget_s:g} s){steps}",
                 f"run dir {self.run_dir}"]
        if self.tensorboard:
            lines.append(f"watch: tensorboard --logdir {self.run_dir}")
        return lines

    def start(self) -> None:
        """Print the banner; on a terminal, open the live line."""
        self._out.lines(self.banner_lines(), title="training")
        if self.interactive:
            self._live = self._out.live("train", total=self.budget_s)

    def status(self, record: Mapping) -> str:
        """The live line's facts for a metrics record: elapsed / budget, time left, env steps and
        rates, and the best evaluation so far."""
        wall = _number(record, "wall_time_s") or 0.0
        elapsed = wall - self.start_wall_time_s
        env_steps, rate = _number(record, "env_steps"), _number(record, "env_steps_per_s")
        left = training_time_left(elapsed, self.budget_s, env_steps, self.max_env_steps, rate)
        v_rate, p_rate = _number(record, "v_updates_per_s"), _number(record, "p_updates_per_s")
        updates = f"V {_si(v_rate)}/s P {_si(p_rate)}/s"
        if self.best is None:
            best = "best eval -"
        else:
            success, when, steps = self.best
            best = f"best eval {success:.2f} at {format_duration(when - self.start_wall_time_s)}"
        last = _number(record, "eval_success")
        return (f"{format_duration(elapsed)} / {format_duration(self.budget_s)}, left {format_duration(left)} | "
                f"env {_si(env_steps)} ({_si(rate)}/s) | {updates} | eval {'-' if last is None else f'{last:.2f}'}, "
                f"{best}")

    def update(self, record: Mapping, detail: str = "") -> None:
        """Take one metrics record (the trainer's ``record()`` dict) and show it, with ``detail``
        (more facts of the record, e.g. speed ratios and training returns) after the status."""
        success = _number(record, "eval_success")
        if success is not None and (self.best is None or success > self.best[0]):
            self.best = (success, _number(record, "wall_time_s") or 0.0, _number(record, "env_steps") or 0.0)
        self.last = record
        status = self.status(record) + (f" | {detail}" if detail else "")
        if self._live is not None:
            elapsed = (_number(record, "wall_time_s") or 0.0) - self.start_wall_time_s
            self._live.update(min(elapsed, self.budget_s), status)
        else:
            self._out.line(f"[train] {status}")

    def summary_lines(self, checkpoint: str | Path | None, stop_reason: str | None = None) -> list[str]:
        record = self.last
        wall = (_number(record, "wall_time_s") or 0.0) - self.start_wall_time_s
        reason = f" ({stop_reason})" if stop_reason else ""
        lines = [f"stopped{reason} after {format_duration(wall)}, {_si(_number(record, 'env_steps'))} env steps"]
        if self.best is None:
            lines.append("best eval: none (no evaluation ran)")
        else:
            success, when, steps = self.best
            lines.append(f"best eval success {success:.2f} at {format_duration(when - self.start_wall_time_s)} "
                         f"({_si(steps)} env steps)")
        lines.append(f"checkpoint {checkpoint}" if checkpoint else "checkpoint: none written")
        if checkpoint:
            lines.append(f"next: python -m export.onnx {self.run_dir} --out policy.onnx")
        return lines

    def finish(self, checkpoint: str | Path | None, stop_reason: str | None = None) -> None:
        """Close the live line and print the summary: best eval and when, the checkpoint, and the
        export command to run next."""
        self.close()
        self._out.lines(self.summary_lines(checkpoint, stop_reason), title="done")

    def close(self) -> None:
        """Close the live line (keeps its last state on screen); idempotent."""
        if self._live is not None:
            live, self._live = self._live, None
            live.stop()

    def __enter__(self) -> TrainingProgress:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- counted work -----------------------------------------------------------------------------
class CountProgress:
    """``done`` of ``total`` items with elapsed time and ETA (episodes, generations, files).

    Args:
        description: what is counted ("episodes").
        total: how many items there are.
        stream, interactive: as :class:`TrainingProgress`.
        min_interval_s: off a terminal, a line is written at the first item, the last, and at most
            once per this many seconds between (CI logs stay short).
        clock: seconds (``time.monotonic``; tests pass their own).
    """

    def __init__(self, description: str, total: int, *, stream: IO[str] | None = None,
                 interactive: bool | None = None, min_interval_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        self.description, self.total, self.done = description, int(total), 0
        self.min_interval_s, self._clock = min_interval_s, clock
        self._out = _Output(stream, interactive)
        self._start = clock()
        self._last_line: float | None = None
        self._live = self._out.live(description, total=total) if self._out.interactive else None

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self._start

    @property
    def eta_s(self) -> float | None:
        return eta_s(self.done, self.total, self.elapsed_s)

    def status(self, note: str = "") -> str:
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        text = (f"{self.description} {self.done}/{self.total}{percent} | elapsed {format_duration(self.elapsed_s)} | "
                f"left {format_duration(self.eta_s)}")
        return f"{text} | {note}" if note else text

    def advance(self, n: int = 1, note: str = "") -> None:
        """``n`` more items are done; ``note`` adds a short fact ("2/3 successes")."""
        self.done += n
        if self._live is not None:
            self._live.update(self.done, self.status(note))
            return
        now = self._clock()
        due = self._last_line is None or now - self._last_line >= self.min_interval_s or self.done >= self.total
        if due:
            self._last_line = now
            self._out.line(self.status(note))

    def close(self) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            live.stop()

    def __enter__(self) -> CountProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
