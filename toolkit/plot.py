"""Training curves: evaluation success and return against wall time and against env steps.

    python -m toolkit.plot runs/a runs/b --out curves.png

Reads each run directory's ``metrics.jsonl`` (one JSON object per log interval, written by
:class:`toolkit.logging.RunLogger`; non-finite values are null) and draws one curve per run,
labelled with the run directory's name, on a 2 x 2 figure (success and return, by wall time and
by env steps). A record repeats the last evaluation until the next one: consecutive records with
the same ``eval_*`` values are one evaluation, drawn at the first record that carries it.
:func:`plot_curves` and :class:`EvalCurve` are the drawing code other scripts reuse
(``benchmarks.pql_vs_ppo --plot``). matplotlib with the Agg backend: no display needed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

#: What a figure can put on its axes, with their axis labels.
X_AXES = {"wall_time_s": "wall time (s)", "env_steps": "env steps"}
METRICS = {"eval_success": "eval success", "eval_return": "eval return"}
IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


class PlotError(ValueError):
    """Input that cannot be plotted; the message names the file and the fix."""


@dataclass(frozen=True)
class EvalCurve:
    """One run's evaluations, in time order (each array (K,), NaN where a value was not finite)."""

    label: str
    wall_time_s: np.ndarray
    env_steps: np.ndarray
    eval_success: np.ndarray
    eval_return: np.ndarray

    @classmethod
    def from_points(cls, label: str, points: Iterable[Mapping]) -> EvalCurve:
        """From dicts with ``wall_time_s``, ``env_steps``, ``eval_success`` and ``eval_return``
        (e.g. benchmarks.pql_vs_ppo's curves); None means not finite."""
        points = list(points)

        def column(key: str) -> np.ndarray:
            return np.array([np.nan if p.get(key) is None else float(p[key]) for p in points], dtype=np.float64)

        return cls(label, column("wall_time_s"), column("env_steps"), column("eval_success"), column("eval_return"))

    def __len__(self) -> int:
        return len(self.wall_time_s)

    def best(self) -> tuple[float, float, float] | None:
        """(best eval success, wall time and env steps of its first evaluation), None without any."""
        if not np.isfinite(self.eval_success).any():
            return None
        k = int(np.nanargmax(self.eval_success))
        return float(self.eval_success[k]), float(self.wall_time_s[k]), float(self.env_steps[k])


def read_records(path: Path) -> list[dict]:
    """The JSON objects of a metrics.jsonl file. A torn last line (a run still writing, or killed
    mid-line) is left out; a bad line elsewhere is a :class:`PlotError` naming it."""
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                break
            raise PlotError(f"{path}:{number} is not a JSON object ({error.msg}); metrics.jsonl has one per line"
                            ) from None
        if not isinstance(record, dict):
            raise PlotError(f"{path}:{number} is not a JSON object; metrics.jsonl has one per line")
        records.append(record)
    return records


def eval_points(records: Iterable[Mapping]) -> list[dict]:
    """The evaluations in ``records``: records with an ``eval_success`` key, one per evaluation
    (a repeat of the previous record's ``eval_*`` values is the same evaluation)."""
    points, previous = [], None
    for record in records:
        if "eval_success" not in record:
            continue  # logged before the first evaluation
        evaluation = tuple(sorted((k, v) for k, v in record.items() if k.startswith("eval_")))
        if evaluation == previous:
            continue
        previous = evaluation
        points.append(record)
    return points


def read_eval_curve(run_dir: str | Path, label: str | None = None) -> EvalCurve:
    """The evaluation curve of a run directory; :class:`PlotError` when the directory is missing,
    has no metrics.jsonl, or no evaluation was logged yet."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PlotError(f"run directory '{run_dir}' does not exist")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise PlotError(f"'{run_dir}' has no metrics.jsonl: is it a training run directory (runs/<name>)?")
    records = read_records(path)
    points = eval_points(records)
    if not points:
        raise PlotError(f"{path} has no evaluation yet ({len(records)} records, none with eval_success): the first "
                        "comes after --log.eval-interval-s seconds of learning")
    for key in ("wall_time_s", "env_steps"):
        if any(key not in point for point in points):
            raise PlotError(f"{path}: a record with eval_success lacks '{key}'")
    return EvalCurve.from_points(label or run_dir.resolve().name, points)


def check_image_path(out: str | Path) -> Path:
    """``out`` as a Path if matplotlib can write an image there; PlotError otherwise."""
    out = Path(out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise PlotError(f"--out '{out}' must end in one of {', '.join(IMAGE_SUFFIXES)}")
    if not out.parent.is_dir():
        raise PlotError(f"cannot write '{out}': directory '{out.parent}' does not exist")
    return out


def draw_curves(ax, curves: Sequence[EvalCurve], x: str = "wall_time_s", metric: str = "eval_success",
                target: float | None = None) -> None:
    """Draw ``metric`` against ``x`` for every curve on the matplotlib Axes ``ax`` (one line with
    markers per run, labelled), with an optional dashed horizontal ``target``."""
    if x not in X_AXES or metric not in METRICS:
        raise PlotError(f"x must be one of {list(X_AXES)} and metric one of {list(METRICS)}, got {x!r}, {metric!r}")
    for curve in curves:
        ax.plot(getattr(curve, x), getattr(curve, metric), marker="o", markersize=3, linewidth=1.5, label=curve.label)
    if target is not None:
        ax.axhline(target, color="0.4", linestyle="--", linewidth=1, label=f"target {target:g}")
    if metric == "eval_success":
        ax.set_ylim(-0.03, 1.03)
    if x == "env_steps":
        from matplotlib.ticker import EngFormatter

        ax.xaxis.set_major_formatter(EngFormatter())
    ax.set(xlabel=X_AXES[x], ylabel=METRICS[metric])
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def plot_curves(curves: Sequence[EvalCurve], out: str | Path, x_axes: Sequence[str] = ("wall_time_s", "env_steps"),
                metrics: Sequence[str] = ("eval_success", "eval_return"), title: str | None = None,
                target_success: float | None = None) -> Path:
    """A figure with one panel per (metric, x axis) pair (rows: metrics, columns: x axes), written
    to ``out`` (png, pdf, svg, ...); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = check_image_path(out)
    if not curves:
        raise PlotError("no curves to draw")
    fig, axes = plt.subplots(len(metrics), len(x_axes), figsize=(5.5 * len(x_axes), 3.6 * len(metrics)),
                             squeeze=False)
    try:
        for row, metric in enumerate(metrics):
            for col, x in enumerate(x_axes):
                draw_curves(axes[row][col], curves, x, metric, target_success if metric == "eval_success" else None)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    return out


def describe(curve: EvalCurve) -> str:
    """One line per run for the terminal: evaluations, best success and when it came."""
    best = curve.best()
    last = f"last {curve.eval_success[-1]:.2f} at {curve.wall_time_s[-1]:.0f}s" if len(curve) else ""
    if best is None:
        return f"{curve.label}: {len(curve)} evaluations, no finite success; {last}"
    success, wall, steps = best
    return (f"{curve.label}: {len(curve)} evaluations, best success {success:.2f} at {wall:.0f}s "
            f"({_si(steps)} env steps), {last}")


def _si(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}"


@dataclass(frozen=True)
class Args:
    """Plot evaluation success and return of training runs against wall time and env steps."""

    run_dirs: tyro.conf.Positional[tuple[Path, ...]]
    """Run directories (each with a metrics.jsonl), one curve each, labelled with the directory name."""
    out: Path = Path("curves.png")
    """Image to write (.png, .pdf, .svg, .jpg)."""
    title: str | None = None
    """Figure title."""
    target_success: float | None = None
    """Draw a dashed line at this eval success (e.g. 0.8)."""


def run(args: Args) -> Path:
    """Read every run and write the figure; raises :class:`PlotError`."""
    if not args.run_dirs:
        raise PlotError("name at least one run directory")
    check_image_path(args.out)
    curves = [read_eval_curve(run_dir) for run_dir in args.run_dirs]
    names = [curve.label for curve in curves]
    if len(set(names)) < len(names):  # runs/a/x and runs/b/x: tell them apart by the full path
        curves = [dataclasses.replace(curve, label=str(run_dir)) for run_dir, curve in zip(args.run_dirs, curves,
                                                                                           strict=True)]
    for curve in curves:
        print(describe(curve))
    return plot_curves(curves, args.out, title=args.title, target_success=args.target_success)


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(Args, args=argv, prog="python -m toolkit.plot")
    try:
        out = run(args)
    except PlotError as error:
        print(f"python -m toolkit.plot: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
