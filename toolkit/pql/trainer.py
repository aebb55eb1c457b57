"""PQL trainer: places the Actor, V-learner and P-learner and runs them at controlled ratios.

Placements of the same role classes:

* ``process`` (default): three processes (torch.multiprocessing, spawn) sharing counters,
  weight boards and the replay ring in shared memory; this process logs, evaluates and
  checkpoints.
* ``sequential``: the three roles interleaved in this process, gated by the same counters
  (for tests and debugging; not a second implementation).
* ``ray``: the roles as Ray actors (toolkit.pql.ray_launcher).

The run directory receives config.yaml, metrics.jsonl, TensorBoard events, roles.json
(role PIDs) and checkpoints/ (atomic). Ctrl-C checkpoints, stops every role and exits.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
import queue
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
import torch.multiprocessing as mp
import yaml

import toolkit
from robots import make_task
from toolkit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from toolkit.config import TrainConfig, from_dict, to_dict
from toolkit.envs.vec_env import VecEnv
from toolkit.logging import RunLogger, progress_line
from toolkit.pql.actor import ActorRole
from toolkit.pql.evaluate import evaluate
from toolkit.pql.p_learner import PLearner
from toolkit.pql.ratio import RatioGate
from toolkit.pql.roles import (
    Dims,
    NormalizerReader,
    TrainingError,
    make_actor,
    make_critic,
    make_normalizers,
    make_shared_state,
    to_cpu,
)
from toolkit.pql.shared import C, SharedState, module_tensors
from toolkit.pql.v_learner import VLearner

ROLE_NAMES = ("Actor", "V-learner", "P-learner")
#: Evaluation envs are seeded ``seed + EVAL_SEED_OFFSET``: episodes no training env ever saw.
EVAL_SEED_OFFSET = 10_000
_PAUSED = {"Actor": C.PAUSED_ACTOR, "V-learner": C.PAUSED_V, "P-learner": C.PAUSED_P}
_ROLE_TIMEOUT_S = 120.0


@dataclass
class TrainResult:
    run_dir: Path
    counters: dict[str, int]
    eval_success: float
    wall_time_s: float
    stop_reason: str
    checkpoint: Path | None


# --- run directory and initial state ------------------------------------------------------
def _prepare_run(cfg: TrainConfig) -> tuple[TrainConfig, Path, dict | None]:
    """Resolve the run directory; on --resume load its config and latest checkpoint."""
    if cfg.resume is not None:
        run_dir = Path(cfg.resume)
        config_path = run_dir / "config.yaml"
        if not config_path.is_file():
            raise CheckpointError(f"cannot resume: '{run_dir}' has no config.yaml (is it a run directory?)")
        checkpoint = load_checkpoint(run_dir)
        try:
            saved = from_dict(TrainConfig, yaml.safe_load(config_path.read_text()))
        except (ValueError, TypeError, yaml.YAMLError) as error:
            raise CheckpointError(f"cannot resume: {config_path} is unreadable: {error}") from error
        # Keep what defines the run; take the stopping/placement choices of this invocation.
        cfg = dataclasses.replace(saved, resume=str(run_dir), run_dir=str(run_dir), max_time_s=cfg.max_time_s,
                                  max_env_steps=cfg.max_env_steps, stop_at_success=cfg.stop_at_success,
                                  mode=cfg.mode, distributed=cfg.distributed, ray_address=cfg.ray_address,
                                  log=cfg.log)
        return cfg, run_dir, checkpoint
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.run_dir) if cfg.run_dir else Path("runs") / f"{cfg.task}-{stamp}"
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        raise CheckpointError(f"run directory '{run_dir}' already holds checkpoints: pass --resume {run_dir} "
                              "to continue it, or choose another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return cfg, run_dir, None


def _dims(task) -> Dims:
    return Dims(obs=task.obs_layout.size, critic_obs=task.critic_obs_layout.size, action=task.robot.num_joints,
                asymmetric=task.asymmetric, metrics=tuple(task.metric_names))


def _initial_role_states(cfg: TrainConfig, dims: Dims, checkpoint: dict | None) -> dict[str, dict]:
    """Network weights every placement starts from (seeded, or from the checkpoint)."""
    if checkpoint is not None:
        actor_state = {"obs_normalizer": checkpoint["obs_normalizer"]}
        if dims.asymmetric:
            actor_state["critic_obs_normalizer"] = checkpoint["critic_obs_normalizer"]
        return {
            "Actor": actor_state,
            "V-learner": {"critic": checkpoint["critic"]["state_dict"], "critic_target": checkpoint["critic_target"],
                          "optimizer": checkpoint["critic_optimizer"]},
            "P-learner": {"actor": checkpoint["actor"]["state_dict"], "optimizer": checkpoint["actor_optimizer"]},
        }
    torch.manual_seed(cfg.seed)
    actor, critic = make_actor(cfg.pql, dims), make_critic(cfg.pql, dims)
    return {"Actor": None,
            "V-learner": {"critic": critic.state_dict(), "critic_target": critic.state_dict()},
            "P-learner": {"actor": actor.state_dict()}}


def _restore_counters(shared: SharedState, checkpoint: dict | None) -> tuple[int, int]:
    shared.counters[C.LEARN_START] = -1
    if checkpoint is None:
        return 0, 0
    counters = checkpoint["counters"]
    shared.counters[C.ACTOR_STEPS] = counters["actor_steps"]
    shared.counters[C.ENV_STEPS] = counters["env_steps"]
    shared.counters[C.V_UPDATES] = counters["v_updates"]
    shared.counters[C.P_UPDATES] = counters["p_updates"]
    return int(counters["v_updates"]), int(counters["p_updates"])


def build_role(name: str, cfg: TrainConfig, dims: Dims, shared: SharedState, state: dict | None):
    """Construct one role (in whatever process or Ray actor runs it)."""
    torch.set_num_threads(cfg.pql.torch_threads)
    seed = cfg.seed * 1000 + ROLE_NAMES.index(name) + 1
    if name == "Actor":
        env = VecEnv(make_task(cfg.task), cfg.env_config())
        return ActorRole(cfg.pql, dims, shared, env, seed, state)
    if name == "V-learner":
        return VLearner(cfg.pql, dims, shared, seed, state, device=cfg.learner_device())
    return PLearner(cfg.pql, dims, shared, seed, state, device=cfg.learner_device())


class _Nap:
    """RoleLoop's wait in shared memory: the other roles' counters are live, so just sleep.

    The sleep doubles from 0.1 ms up to 2 ms while the gate stays shut: a role waiting for a
    much slower one (the P-learner for the V-learner) then costs ~500 wake-ups/s, not ~5000,
    which measurably freed CPU for the working roles on a 2-core machine; an update takes
    10-50 ms on a CPU, so waking 2 ms late costs little.
    """

    def __init__(self) -> None:
        self._sleep = 1e-4

    def __call__(self, worked: bool) -> None:
        if worked:
            self._sleep = 1e-4
            return
        time.sleep(self._sleep)
        self._sleep = min(self._sleep * 2, 2e-3)


class RoleLoop:
    """Runs one role under the ratio gates, serving pause (checkpoint) requests.

    ``poll(worked)`` runs after every attempt at work and while paused; it is where a
    placement whose counters are not shared memory (Ray) exchanges them with the others.
    """

    def __init__(self, name: str, role, shared: SharedState, gate: RatioGate, v_start: int, p_start: int,
                 poll: Callable[[bool], None] | None = None) -> None:
        self.name, self.role, self.shared, self.gate = name, role, shared, gate
        self.v_start, self.p_start, self.poll = v_start, p_start, poll or _Nap()
        self._served_pause = 0
        self._may = {"Actor": gate.actor_may_step, "V-learner": gate.v_may_update, "P-learner": gate.p_may_update}[name]
        self._work = role.step if name == "Actor" else role.update

    def try_work(self) -> bool:
        """Do one unit of work if the gate allows it; returns whether it did."""
        if self._may(self.shared.counters, self.v_start, self.p_start):
            self._work()
            return True
        return False

    def pause_requested(self) -> int:
        request = int(self.shared.counters[C.PAUSE])
        return request if request % 2 == 1 and request > self._served_pause else 0

    def serve_pause(self, request: int, state_queue) -> None:
        state_queue.put((self.name, to_cpu(self.role.state_dict())))
        self._served_pause = request
        self.shared.counters[_PAUSED[self.name]] = request
        while int(self.shared.counters[C.PAUSE]) == request and not int(self.shared.counters[C.STOP]):
            self.poll(False)

    def run(self, state_queue) -> None:
        counters = self.shared.counters
        while not int(counters[C.STOP]):
            request = self.pause_requested()
            if request:
                self.serve_pause(request, state_queue)
                continue
            self.poll(self.try_work())


def _role_process(name: str, cfg: TrainConfig, dims: Dims, shared: SharedState, state: dict | None,
                  v_start: int, p_start: int, state_queue, error_queue) -> None:
    """Entry point of a role process (spawn)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the trainer handles Ctrl-C and stops us
    _die_with_parent()
    try:
        role = build_role(name, cfg, dims, shared, state)
        gate = RatioGate(cfg.pql.critic_updates_per_actor_step, cfg.pql.critic_updates_per_policy_update,
                         cfg.pql.ratio_slack, cfg.pql.batch_size)
        RoleLoop(name, role, shared, gate, v_start, p_start).run(state_queue)
    except BaseException as error:  # report every failure to the trainer, then die non-zero
        error_queue.put((name, f"{type(error).__name__}: {error}", traceback.format_exc()))
        raise SystemExit(1) from error


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this role if the trainer dies (kill -9, OOM): no orphaned role keeps
    a core busy. Elsewhere the roles still stop on the trainer's STOP counter."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() == 1:  # the trainer died before prctl took effect
        os._exit(1)


# --- the trainer --------------------------------------------------------------------------
class Trainer:
    """Sets up a run and drives one placement of the roles."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg, self.run_dir, checkpoint = _prepare_run(cfg)
        cfg = self.cfg
        self.task = make_task(cfg.task)
        self.dims = _dims(self.task)
        self.gate = RatioGate(cfg.pql.critic_updates_per_actor_step, cfg.pql.critic_updates_per_policy_update,
                              cfg.pql.ratio_slack, cfg.pql.batch_size)
        # A Ray run's learners keep their own rings: none here.
        self.shared = make_shared_state(cfg.pql, self.dims, replay=cfg.distributed != "ray")
        self.v_start, self.p_start = _restore_counters(self.shared, checkpoint)
        self.role_states = _initial_role_states(cfg, self.dims, checkpoint)
        self.prior_wall_time = float(checkpoint["counters"].get("wall_time_s", 0.0)) if checkpoint else 0.0
        self._publish_initial_weights()
        # The trainer's own view of the policy, for evaluation.
        self.eval_actor = make_actor(cfg.pql, self.dims).to(cfg.device).requires_grad_(False)
        self.eval_norms = NormalizerReader(cfg.pql, self.dims, self.shared, cfg.device)
        self._eval_env: VecEnv | None = None
        self.logger = RunLogger(self.run_dir, cfg.log.tensorboard)
        self.last_eval: dict[str, float] = {}
        self.last_checkpoint: Path | None = None
        self.paused_counters: dict[str, int] | None = None

    def _publish_initial_weights(self) -> None:
        dims, pql, shared = self.dims, self.cfg.pql, self.shared
        actor, critic = make_actor(pql, dims), make_critic(pql, dims)
        actor.load_state_dict(self.role_states["P-learner"]["actor"])
        critic.load_state_dict(self.role_states["V-learner"]["critic"])
        shared.actor_board.publish(module_tensors(actor))
        shared.critic_board.publish(module_tensors(critic))
        obs_norm, critic_norm = make_normalizers(pql, dims)
        if self.role_states["Actor"] is not None:
            obs_norm.load_state_dict(self.role_states["Actor"]["obs_normalizer"])
            if dims.asymmetric:
                critic_norm.load_state_dict(self.role_states["Actor"]["critic_obs_normalizer"])
        shared.obs_norm_board.publish(module_tensors(obs_norm))
        shared.critic_obs_norm_board.publish(module_tensors(critic_norm))

    # --- shared duties of every placement -------------------------------------------------
    def counters(self) -> dict[str, int]:
        c = self.shared.counters
        return {"actor_steps": int(c[C.ACTOR_STEPS]), "env_steps": int(c[C.ENV_STEPS]),
                "v_updates": int(c[C.V_UPDATES]), "p_updates": int(c[C.P_UPDATES])}

    def run_evaluation(self) -> dict[str, float]:
        if self._eval_env is None:
            eval_config = self.cfg.env_config(num_envs=self.cfg.log.eval_envs, seed=self.cfg.seed + EVAL_SEED_OFFSET)
            self._eval_env = VecEnv(make_task(self.cfg.task), eval_config)
        self.shared.actor_board.read_into(module_tensors(self.eval_actor))
        self.eval_norms.sync()
        norm = self.eval_norms.obs_norm if self.cfg.pql.normalize_obs else None
        self.last_eval = evaluate(self._eval_env, self.eval_actor, norm, seed=self.cfg.seed + EVAL_SEED_OFFSET)
        return self.last_eval

    def checkpoint_state(self, role_states: dict[str, dict], wall_time_s: float) -> dict:
        cfg, dims = self.cfg, self.dims
        v, p, a = role_states["V-learner"], role_states["P-learner"], role_states["Actor"]
        state = {
            "toolkit_version": toolkit.__version__,
            "run_name": self.run_dir.name,
            "task": cfg.task,
            "task_overrides": {},
            "config": to_dict(cfg),
            "obs_layout": self.task.obs_layout.to_json(),
            "critic_obs_layout": self.task.critic_obs_layout.to_json(),
            "counters": {**(self.paused_counters or self.counters()), "wall_time_s": wall_time_s},
            "actor": {"hidden": list(cfg.pql.actor_hidden), "action_dim": dims.action, "state_dict": p["actor"]},
            "critic": {"hidden": list(cfg.pql.critic_hidden), "num_atoms": cfg.pql.num_atoms, "v_min": cfg.pql.v_min,
                       "v_max": cfg.pql.v_max, "state_dict": v["critic"]},
            "critic_target": v["critic_target"],
            "actor_optimizer": p["optimizer"],
            "critic_optimizer": v["optimizer"],
            "obs_normalizer": a["obs_normalizer"],
        }
        if dims.asymmetric:
            state["critic_obs_normalizer"] = a["critic_obs_normalizer"]
        return state

    def save(self, role_states: dict[str, dict], wall_time_s: float) -> Path:
        """Write a checkpoint of ``role_states``; its counters are those the roles had when they
        handed their states over (``paused_counters``), else the current ones."""
        state = self.checkpoint_state(role_states, wall_time_s)
        self.last_checkpoint = save_checkpoint(self.run_dir, state, state["counters"]["env_steps"])
        self.paused_counters = None
        return self.last_checkpoint

    def record(self, now: float, start: float, previous: dict) -> dict:
        """Build and write one metrics record; ``previous`` carries the last record's totals."""
        counters = self.counters()
        stats = self.shared.episode_stats.clone()
        elapsed = max(now - previous["time"], 1e-9)
        episodes = float(stats[3] - previous["stats"][3])
        # Means over the episodes finished since the last record (nan when none finished).
        per_episode = (stats - previous["stats"]) / episodes if episodes else torch.full_like(stats, float("nan"))
        stat_names = ("return", "success", "length", "count", *self.dims.metrics)
        record = {
            **counters,
            "wall_time_s": self.prior_wall_time + now - start,
            "env_steps_per_s": (counters["env_steps"] - previous["env_steps"]) / elapsed,
            "v_updates_per_s": (counters["v_updates"] - previous["v_updates"]) / elapsed,
            "p_updates_per_s": (counters["p_updates"] - previous["p_updates"]) / elapsed,
            **self.gate.measured(self.shared.counters, self.v_start, self.p_start),
            "episodes": int(stats[3]),
            **{f"episode_{name}": float(mean) for name, mean in zip(stat_names, per_episode, strict=True)
               if name != "count"},
            "critic_loss": float(self.shared.losses[0]),
            "actor_loss": float(self.shared.losses[1]),
            "nan_resets": int(self.shared.counters[C.NAN_RESETS]),
            **self.last_eval,
        }
        self.logger.log(record)
        print(progress_line(record, self.dims.metrics), flush=True)
        previous.update(time=now, stats=stats, **counters)
        return record

    def should_stop(self, elapsed: float) -> str | None:
        cfg = self.cfg
        if elapsed >= cfg.max_time_s:
            return "max_time_s"
        if self.counters()["env_steps"] >= cfg.max_env_steps:
            return "max_env_steps"
        success = self.last_eval.get("eval_success", float("nan"))
        if cfg.stop_at_success is not None and math.isfinite(success) and success >= cfg.stop_at_success:
            return "stop_at_success"
        return None

    # --- placements ----------------------------------------------------------------------
    def run(self) -> TrainResult:
        try:
            if self.cfg.distributed == "ray":
                from toolkit.pql.ray_launcher import run_ray

                return run_ray(self)
            if self.cfg.mode == "sequential":
                return self._run_sequential()
            return self._run_processes()
        finally:
            self.logger.close()

    def _main_loop(self, tick, gather_states, start: float) -> tuple[str, float]:
        """The duties shared by every placement: log, evaluate, checkpoint, stop.

        ``tick()`` advances the placement (or checks its health); ``gather_states(final)``
        returns a consistent snapshot of every role's state (``final``: roles stay stopped).
        """
        cfg = self.cfg
        previous = {"time": start, "stats": self.shared.episode_stats.clone(), **self.counters()}
        next_log = start + cfg.log.log_interval_s
        next_eval = start + cfg.log.eval_interval_s
        next_ckpt = start + cfg.log.checkpoint_interval_s
        stop_reason = None
        try:
            while stop_reason is None:
                tick()
                now = time.perf_counter()
                learning = self.gate.learning(self.shared.counters)
                if now >= next_eval and learning:
                    self.run_evaluation()
                    next_eval = now + cfg.log.eval_interval_s
                if now >= next_log:
                    self.record(now, start, previous)
                    next_log = now + cfg.log.log_interval_s
                if now >= next_ckpt and learning:
                    self.save(gather_states(False), self.prior_wall_time + now - start)
                    next_ckpt = now + cfg.log.checkpoint_interval_s
                stop_reason = self.should_stop(now - start)
        except KeyboardInterrupt:
            stop_reason = "interrupted"
        wall = self.prior_wall_time + time.perf_counter() - start
        self.save(gather_states(True), wall)
        if stop_reason != "stop_at_success":
            self.run_evaluation()
        self.record(time.perf_counter(), start, previous)
        return stop_reason, wall

    def _result(self, stop_reason: str, wall: float) -> TrainResult:
        print(f"stopped ({stop_reason}) after {wall:.0f}s; checkpoint {self.last_checkpoint}", flush=True)
        return TrainResult(self.run_dir, self.counters(), self.last_eval.get("eval_success", float("nan")),
                           wall, stop_reason, self.last_checkpoint)

    def _run_sequential(self) -> TrainResult:
        loops = [RoleLoop(name, build_role(name, self.cfg, self.dims, self.shared, self.role_states[name]),
                          self.shared, self.gate, self.v_start, self.p_start) for name in ROLE_NAMES]

        def tick() -> None:
            # One round: each role works while its gate allows (the gates keep the ratios).
            for loop in loops:
                while loop.try_work():
                    pass

        def gather(final: bool) -> dict[str, dict]:
            return {loop.name: to_cpu(loop.role.state_dict()) for loop in loops}

        start = time.perf_counter()
        stop_reason, wall = self._main_loop(tick, gather, start)
        return self._result(stop_reason, wall)

    def _run_processes(self) -> TrainResult:
        ctx = mp.get_context("spawn")
        state_queue, error_queue = ctx.Queue(), ctx.Queue()
        processes = {}
        for name in ROLE_NAMES:
            processes[name] = ctx.Process(
                target=_role_process, name=name, daemon=True,
                args=(name, self.cfg, self.dims, self.shared, self.role_states[name], self.v_start, self.p_start,
                      state_queue, error_queue))
        for process in processes.values():
            process.start()
        (self.run_dir / "roles.json").write_text(json.dumps({n: p.pid for n, p in processes.items()}))

        def check_health() -> None:
            try:
                name, message, trace = error_queue.get_nowait()
            except queue.Empty:
                pass
            else:
                raise TrainingError(f"{name} failed: {message}\n{trace}")
            for name, process in processes.items():
                if process.exitcode is not None:
                    how = f"signal {-process.exitcode}" if process.exitcode < 0 else f"exit code {process.exitcode}"
                    raise TrainingError(f"{name} process died ({how}); stopping all roles")

        def tick() -> None:
            check_health()
            time.sleep(0.02)

        def gather(final: bool) -> dict[str, dict]:
            counters = self.shared.counters
            request = int(counters[C.PAUSE]) + 1  # odd: paused
            counters[C.PAUSE] = request
            states: dict[str, dict] = {}
            deadline = time.perf_counter() + _ROLE_TIMEOUT_S
            try:
                while len(states) < len(ROLE_NAMES):
                    check_health()
                    if time.perf_counter() > deadline:
                        raise TrainingError(f"roles {sorted(set(ROLE_NAMES) - set(states))} did not answer a "
                                            f"checkpoint request within {_ROLE_TIMEOUT_S:.0f}s")
                    try:
                        name, state = state_queue.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    states[name] = state
                self.paused_counters = self.counters()  # every role is paused: these match the states
            finally:
                if final:  # stop while paused, so the counters stay those of the checkpoint
                    counters[C.STOP] = 1
                counters[C.PAUSE] = request + 1
            return states

        start = time.perf_counter()
        try:
            stop_reason, wall = self._main_loop(tick, gather, start)
        finally:
            self.shared.counters[C.STOP] = 1
            for process in processes.values():
                process.join(timeout=10)
                if process.is_alive():
                    process.terminate()
                    process.join(timeout=5)
        return self._result(stop_reason, wall)


def train(cfg: TrainConfig) -> TrainResult:
    """Train with ``cfg``; raises CheckpointError (bad --resume) or TrainingError (role failure)."""
    return Trainer(cfg).run()


def cli_main(cfg: TrainConfig) -> int:
    """Shared body of the train.* commands: run and map failures to exit codes."""
    try:
        result = train(cfg)
    except CheckpointError as error:
        print(f"error: {error}", flush=True)
        return 2
    except TrainingError as error:
        print(f"error: training stopped: {error}", flush=True)
        return 1
    return 130 if result.stop_reason == "interrupted" else 0


__all__ = ["TrainResult", "Trainer", "TrainingError", "cli_main", "train"]
