"""PQL vs PPO: wall-clock time to a target evaluation success, same task, same machine (issue 4).

    python -m benchmarks.pql_vs_ppo --task dclaw-turn --target-success 0.8 --max-time-s 1800 --json
    python -m benchmarks.pql_vs_ppo --plot pql_vs_ppo.png     # + both eval-success curves on one figure

The PQL paper (arXiv 2307.12983) reports PQL reaching a given success about 3x faster in wall
clock than PPO. This benchmark trains the same task twice, one algorithm after the other:

* PQL: our trainer, ``toolkit.pql.trainer`` (``--pql-mode process``: Actor, V-learner and
  P-learner in three processes), with ``stop_at_success = --target-success``, ``--pql-num-envs``
  envs and the ``--pql.*`` hyper-parameters (``toolkit.config.PQLConfig``; defaults = the trainer's);
* PPO: rsl_rl's ``OnPolicyRunner`` (rsl-rl-lib 5) on the same VecEnv through
  ``benchmarks.rsl_rl_adapter``, with ``--ppo-num-envs`` envs (on-policy PPO wants more envs than
  PQL; the choice is in the JSON) and the config of :func:`ppo_train_config`: the networks of PQL
  (``--pql.actor-hidden``/``--pql.critic-hidden``, ELU), running observation normalization, PQL's
  reward scale and discount, Adam lr 1e-3 with rsl_rl's adaptive KL schedule, small entropy bonus.

What is the same for both: the task and its settings, physics threads (``--nthread``), seed,
and the evaluation: every ``--eval-interval-s`` seconds of training, ``toolkit.pql.evaluate.evaluate``
runs one deterministic episode on each of ``--eval-envs`` envs of a separate eval VecEnv seeded
``seed + 10000`` (as the PQL trainer does): PQL's actor on its normalizer, PPO's Gaussian mean
through PPO's own observation normalizer. ``eval_success`` is the fraction of episodes successful
at their last step. Periodic checkpoints are off for both (PQL writes one at the end, untimed).

Clocks. Each algorithm's clock starts before its set-up (PQL: the trainer with its shared replay
memory, process spawn and role start-up all count; PPO: envs and runner). A curve point's time is
when the evaluated policy was taken. PPO's training pauses while it is evaluated and that time is
left out of its clock (``eval_time_s`` reports it); PQL evaluates in the trainer process while its
roles keep training, so its evaluations cost it some CPU but no pause. Training stops at the
target, or after ``--max-time-s`` (each trainer's clock), after which one final evaluation is made.
The two runs happen one after the other: on a shared machine, compare ``load_avg`` before/after.
The paper's setting is a GPU; on a CPU-only machine PQL's three roles share the cores with each
other (and PPO's update with its env stepping), so the ratio is a property of the machine as much as
of the algorithms: quote ``machine`` with it.

JSON (one line; ``--json`` prints only it): task, target_success, max_time_s, eval {...},
pql and ppo: {time_to_target_s, env_steps_to_target (null if not reached), final_eval_success,
best_eval_success, curve [{wall_time_s, env_steps, eval_success, eval_return}], num_envs,
wall_time_s, env_steps, setup_s, stop_reason, load_avg_before/after, config, ...},
ratio_ppo_over_pql (time to target, null unless both reached it), env_steps_ratio_ppo_over_pql,
at_best_common_success {success (the best eval success both reached), pql_time_s, ppo_time_s,
ratio_ppo_over_pql} (informative when one misses the target), machine {cpu_count, torch, ...},
and with ``--plot out.png`` the figure's path (both eval-success curves against wall time).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mujoco
import torch
import tyro

from robots import make_task
from toolkit.config import LogConfig, PlacementKind, PQLConfig, TrainConfig, to_dict
from toolkit.envs.vec_env import VecEnv
from toolkit.plot import EvalCurve, check_image_path, plot_curves
from toolkit.pql.evaluate import evaluate
from toolkit.pql.trainer import EVAL_SEED_OFFSET, Trainer

ALGORITHMS = ("pql", "ppo")


@dataclass(frozen=True)
class Args:
    """Train the task with PQL and with rsl_rl's PPO; report each one's wall-clock time to a target
    evaluation success and the ratio."""

    task: str = "dclaw-turn"
    """Registered task (robots.TASKS)."""
    target_success: float = 0.8
    """Evaluation success rate (0, 1] that stops a run and defines time-to-target."""
    max_time_s: float = 1800.0
    """Training-time budget of each algorithm (seconds)."""
    algorithms: tuple[Literal["pql", "ppo"], ...] = ALGORITHMS
    """Which algorithms to run, in this order (ratios need both; ``ppo pql`` runs PPO first)."""
    seed: int = 0
    """Seed of networks, envs and evaluation (both algorithms)."""
    nthread: int = 1
    """Physics threads of the C engine, for both algorithms' training envs and the eval envs."""
    randomize: bool = False
    """Domain randomization in the training and eval envs (both algorithms)."""
    eval_interval_s: float = 15.0
    """Seconds of training between evaluations (both algorithms): the resolution of time-to-target."""
    eval_envs: int = 32
    """Episodes per evaluation (one deterministic episode per env)."""
    pql_num_envs: int = TrainConfig().env.num_envs
    """Envs stepped by PQL's actor (the trainer's default)."""
    pql_mode: Literal["process", "sequential"] = "process"
    """PQL placement: process (the real thing: three processes) or sequential (one process, for tests)."""
    pql: PQLConfig = PQLConfig()
    """PQL hyper-parameters (the trainer's defaults); PPO takes its network widths from here too."""
    ppo_num_envs: int = 256
    """Envs stepped by PPO (on-policy PPO wants more envs than PQL)."""
    ppo_steps_per_env: int = 32
    """Rollout length per PPO iteration (rsl_rl num_steps_per_env)."""
    ppo_learning_rate: float = 1e-3
    """Initial Adam learning rate of PPO (then rsl_rl's adaptive KL schedule)."""
    ppo_desired_kl: float = 0.01
    """Target KL of the adaptive learning-rate schedule."""
    ppo_entropy_coef: float = 0.005
    """Entropy bonus coefficient."""
    ppo_epochs: int = 5
    """Learning epochs per PPO iteration."""
    ppo_mini_batches: int = 4
    """Mini-batches per epoch."""
    ppo_init_std: float = 1.0
    """Initial std of PPO's Gaussian policy (actions are clipped to [-1, 1] by the env)."""
    ppo_torch_threads: int = 0
    """Torch intra-op threads of the PPO process (0: all CPUs; PQL's three roles use one each)."""
    run_dir: str | None = None
    """Keep PQL's run directory under this path (default: a temporary directory, removed)."""
    json: bool = False
    """Print only the JSON result line."""
    plot: Path | None = None
    """Also draw both algorithms' eval success against wall time on one figure (.png, .pdf, .svg)."""


def check_args(args: Args) -> None:
    """Raise ValueError with the offending flag for settings no run can use."""
    make_task(args.task)  # the registry's error (with close matches) for an unknown task
    if not 0 < args.target_success <= 1:
        raise ValueError(f"--target-success must be in (0, 1], got {args.target_success}")
    for name in ("max_time_s", "eval_interval_s", "ppo_learning_rate", "ppo_init_std"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    for name in ("eval_envs", "pql_num_envs", "ppo_num_envs", "ppo_steps_per_env", "ppo_epochs", "ppo_mini_batches"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.ppo_num_envs * args.ppo_steps_per_env < args.ppo_mini_batches:
        raise ValueError(f"a PPO rollout ({args.ppo_num_envs} envs x {args.ppo_steps_per_env} steps) is smaller than "
                         f"--ppo-mini-batches {args.ppo_mini_batches}")
    if not args.algorithms:
        raise ValueError(f"--algorithms is empty: name one or more of {ALGORITHMS}")
    if args.plot is not None:
        check_image_path(args.plot)  # a bad --plot fails now, not after the training runs


def pql_train_config(args: Args, run_dir: str | None = None) -> TrainConfig:
    """The PQL trainer's config; its ``env_config`` also builds PPO's training and eval envs."""
    return TrainConfig().replace(
        task=args.task, num_envs=args.pql_num_envs, randomize=args.randomize, seed=args.seed, nthread=args.nthread,
        placement=PlacementKind(args.pql_mode), max_time_s=args.max_time_s, stop_at_success=args.target_success,
        run_dir=run_dir, pql=args.pql,
        log=LogConfig(log_interval_s=min(10.0, args.eval_interval_s), eval_interval_s=args.eval_interval_s,
                      eval_envs=args.eval_envs, checkpoint_interval_s=1e9, tensorboard=False))


def ppo_train_config(args: Args, obs_groups: dict[str, list[str]]) -> dict:
    """rsl_rl OnPolicyRunner config (rsl-rl-lib 5 layout) of the PPO baseline.

    Networks as PQL's (ELU MLPs of ``--pql.actor-hidden``/``--pql.critic-hidden``) with running
    observation normalization (as PQL's ``normalize_obs``); PQL's discount. GAE lambda 0.95, clip
    0.2, clipped value loss, grad-norm 1.0: rsl_rl's standard settings.
    """
    return {
        "num_steps_per_env": args.ppo_steps_per_env,
        "save_interval": 10**9,  # no log directory: nothing is saved
        "obs_groups": {name: list(groups) for name, groups in obs_groups.items()},
        "check_for_nan": True,
        "actor": {"class_name": "MLPModel", "hidden_dims": list(args.pql.actor_hidden), "activation": "elu",
                  "obs_normalization": True,
                  "distribution_cfg": {"class_name": "GaussianDistribution", "init_std": args.ppo_init_std,
                                       "std_type": "scalar"}},
        "critic": {"class_name": "MLPModel", "hidden_dims": list(args.pql.critic_hidden), "activation": "elu",
                   "obs_normalization": True},
        "algorithm": {"class_name": "PPO", "learning_rate": args.ppo_learning_rate, "schedule": "adaptive",
                      "desired_kl": args.ppo_desired_kl, "entropy_coef": args.ppo_entropy_coef,
                      "num_learning_epochs": args.ppo_epochs, "num_mini_batches": args.ppo_mini_batches,
                      "clip_param": 0.2, "gamma": args.pql.gamma, "lam": 0.95, "value_loss_coef": 1.0,
                      "use_clipped_value_loss": True, "max_grad_norm": 1.0},
    }


# --- curves ---------------------------------------------------------------------------------
def curve_point(wall_time_s: float, env_steps: int, result: dict[str, float]) -> dict:
    return {"wall_time_s": round(wall_time_s, 3), "env_steps": int(env_steps),
            "eval_success": result["eval_success"], "eval_return": result["eval_return"]}


def first_reaching(curve: list[dict], level: float) -> dict | None:
    """The first curve point with eval_success >= level (None if none)."""
    return next((point for point in curve if point["eval_success"] >= level), None)


def summarize(curve: list[dict], target: float) -> dict:
    """time_to_target_s, env_steps_to_target, final and best eval success of one run."""
    hit = first_reaching(curve, target)
    return {"time_to_target_s": hit["wall_time_s"] if hit else None,
            "env_steps_to_target": hit["env_steps"] if hit else None,
            "final_eval_success": curve[-1]["eval_success"] if curve else None,
            "best_eval_success": max((p["eval_success"] for p in curve), default=None)}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return round(numerator / denominator, 4)


def compare(pql: dict, ppo: dict) -> dict:
    """Ratios PPO/PQL: at the target, and at the best eval success both runs reached."""
    common = min(pql["best_eval_success"] or 0.0, ppo["best_eval_success"] or 0.0)
    at_common: dict = {"success": common, "pql_time_s": None, "ppo_time_s": None, "ratio_ppo_over_pql": None}
    if common > 0:  # 0 is "reached" by any untrained policy: no information
        pql_hit, ppo_hit = first_reaching(pql["curve"], common), first_reaching(ppo["curve"], common)
        at_common.update(pql_time_s=pql_hit["wall_time_s"], ppo_time_s=ppo_hit["wall_time_s"],
                         ratio_ppo_over_pql=_ratio(ppo_hit["wall_time_s"], pql_hit["wall_time_s"]))
    return {"ratio_ppo_over_pql": _ratio(ppo["time_to_target_s"], pql["time_to_target_s"]),
            "env_steps_ratio_ppo_over_pql": _ratio(ppo["env_steps_to_target"], pql["env_steps_to_target"]),
            "at_best_common_success": at_common}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _progress(name: str, point: dict) -> None:
    print(f"[{name} {point['wall_time_s']:7.0f}s] env {point['env_steps']:,} | eval success "
          f"{point['eval_success']:.2f} return {point['eval_return']:.1f}", file=sys.stderr, flush=True)


# --- PQL ------------------------------------------------------------------------------------
class _TimedTrainer(Trainer):
    """The PQL trainer, recording each evaluation on the benchmark's clock (started at ``t0``)."""

    def __init__(self, cfg: TrainConfig, task: str, t0: float) -> None:
        self.t0 = t0
        self.curve: list[dict] = []
        super().__init__(cfg, functools.partial(make_task, task))

    def run_evaluation(self) -> dict[str, float]:
        taken, env_steps = time.perf_counter() - self.t0, self.counters()["env_steps"]
        result = super().run_evaluation()
        self.curve.append(curve_point(taken, env_steps, result))
        _progress("pql", self.curve[-1])
        return result


@contextlib.contextmanager
def _run_directory(keep: str | None) -> Iterator[Path]:
    if keep is not None:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
        return
    with tempfile.TemporaryDirectory(prefix="pql_vs_ppo-") as tmp:
        yield Path(tmp)


def run_pql(args: Args) -> dict:
    """Train with the PQL trainer until the target or the budget; returns its result dict."""
    with _run_directory(args.run_dir) as run_dir:
        cfg = pql_train_config(args, run_dir=str(run_dir / "pql"))
        load_before = _load()
        t0 = time.perf_counter()
        trainer = _TimedTrainer(cfg, args.task, t0)
        setup_s = time.perf_counter() - t0
        result = trainer.run()
        wall = time.perf_counter() - t0
    return {**summarize(trainer.curve, args.target_success), "curve": trainer.curve, "num_envs": cfg.env.num_envs,
            "wall_time_s": round(wall, 3), "env_steps": result.counters["env_steps"], "setup_s": round(setup_s, 3),
            "stop_reason": result.stop_reason, "counters": result.counters, "mode": cfg.placement.placement.value,
            "load_avg_before": load_before, "load_avg_after": _load(), "config": to_dict(cfg)}


# --- PPO ------------------------------------------------------------------------------------
def run_ppo(args: Args) -> dict:
    """Train with rsl_rl's PPO until the target or the budget; returns its result dict."""
    from rsl_rl.runners import OnPolicyRunner

    from benchmarks.rsl_rl_adapter import DeterministicPolicy, RslRlVecEnv, rsl_rl_version

    rsl_rl_version()  # a clear error for an incompatible rsl-rl-lib
    base = pql_train_config(args)
    threads = args.ppo_torch_threads or os.cpu_count() or 1
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        load_before = _load()
        t0 = time.perf_counter()
        torch.manual_seed(args.seed)
        env = RslRlVecEnv(VecEnv(make_task(args.task), base.env_config(num_envs=args.ppo_num_envs)),
                          reward_scale=args.pql.reward_scale)
        train_cfg = ppo_train_config(args, env.obs_groups)
        runner = OnPolicyRunner(env, train_cfg, log_dir=None, device=str(env.device))
        eval_env = VecEnv(make_task(args.task),
                          base.env_config(num_envs=args.eval_envs, seed=args.seed + EVAL_SEED_OFFSET))
        setup_s = time.perf_counter() - t0
        steps_per_iteration = args.ppo_num_envs * args.ppo_steps_per_env
        curve: list[dict] = []
        iterations, eval_time = 0, 0.0
        next_eval = args.eval_interval_s
        stop_reason = "max_time_s"
        while True:
            runner.learn(num_learning_iterations=1)
            iterations += 1
            now = time.perf_counter() - t0 - eval_time  # training time: evaluations excluded
            out_of_time = now >= args.max_time_s
            if now >= next_eval or out_of_time:
                begin = time.perf_counter()
                policy = DeterministicPolicy(runner.get_inference_policy())
                result = evaluate(eval_env, policy, None, seed=args.seed + EVAL_SEED_OFFSET)
                eval_time += time.perf_counter() - begin
                curve.append(curve_point(now, iterations * steps_per_iteration, result))
                _progress("ppo", curve[-1])
                next_eval = now + args.eval_interval_s
                if result["eval_success"] >= args.target_success:
                    stop_reason = "stop_at_success"
                    break
            if out_of_time:
                break
        wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(previous_threads)
    return {**summarize(curve, args.target_success), "curve": curve, "num_envs": args.ppo_num_envs,
            "wall_time_s": round(wall, 3), "env_steps": iterations * steps_per_iteration,
            "setup_s": round(setup_s, 3), "stop_reason": stop_reason, "iterations": iterations,
            "eval_time_s": round(eval_time, 3), "torch_threads": threads,
            "final_learning_rate": runner.alg.learning_rate,
            "load_avg_before": load_before, "load_avg_after": _load(), "rsl_rl": rsl_rl_version(),
            "reward_scale": env.reward_scale, "config": train_cfg}


# --- the benchmark --------------------------------------------------------------------------
def machine_info() -> dict:
    return {"cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)),
            "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "mujoco": mujoco.__version__, "load_avg_start": _load()}


def run(args: Args) -> dict:
    """Run the benchmark; returns the result dict (see the module docstring). Training output
    (progress lines, rsl_rl's model printout) goes to stderr."""
    check_args(args)
    result: dict = {"benchmark": "pql_vs_ppo", "task": args.task, "target_success": args.target_success,
                    "max_time_s": args.max_time_s, "seed": args.seed, "nthread": args.nthread,
                    "randomize": args.randomize,
                    "eval": {"envs": args.eval_envs, "interval_s": args.eval_interval_s,
                             "seed": args.seed + EVAL_SEED_OFFSET,
                             "protocol": "toolkit.pql.evaluate.evaluate: one deterministic episode per env"},
                    "machine": machine_info()}
    runners = {"pql": run_pql, "ppo": run_ppo}
    with contextlib.redirect_stdout(sys.stderr):
        for name in dict.fromkeys(args.algorithms):
            result[name] = runners[name](args)
    if "pql" in result and "ppo" in result:
        result.update(compare(result["pql"], result["ppo"]))
    else:
        result.update(ratio_ppo_over_pql=None, env_steps_ratio_ppo_over_pql=None, at_best_common_success=None)
    result["machine"]["load_avg_end"] = _load()
    if args.plot is not None:
        result["plot"] = str(plot_comparison(result, args.plot))
    return result


def plot_comparison(result: dict, out: Path) -> Path:
    """Both algorithms' eval success against wall time (their own clocks) on one figure, with the
    target as a dashed line (toolkit.plot's drawing code)."""
    curves = [EvalCurve.from_points(f"{name.upper()} ({result[name]['num_envs']} envs)", result[name]["curve"])
              for name in ALGORITHMS if name in result]
    return plot_curves(curves, out, x_axes=("wall_time_s",), metrics=("eval_success",),
                       title=f"{result['task']}: time to eval success {result['target_success']:g}",
                       target_success=result["target_success"])


def _fmt(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def main(args: Args) -> None:
    result = run(args)
    if not args.json:
        print(f"{result['task']}: time to eval success >= {result['target_success']} "
              f"(budget {result['max_time_s']:.0f}s each, {result['machine']['cpu_count']} CPUs)")
        for name in ALGORITHMS:
            if name in result:
                r = result[name]
                print(f"  {name}  {r['num_envs']:>4} envs  target {_fmt(r['time_to_target_s'], '.0f'):>6}s "
                      f"({_fmt(r['env_steps_to_target'], ',')} env steps)  final {_fmt(r['final_eval_success'], '.2f')}"
                      f"  best {_fmt(r['best_eval_success'], '.2f')}  [{r['stop_reason']}]")
        common = result["at_best_common_success"] or {}
        print(f"  ratio PPO/PQL: {_fmt(result['ratio_ppo_over_pql'], '.2f')} at the target, "
              f"{_fmt(common.get('ratio_ppo_over_pql'), '.2f')} at success {_fmt(common.get('success'), '.2f')}")
        if "plot" in result:
            print(f"  curves: {result['plot']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(tyro.cli(Args))
