"""PQL trainer: sets up a run and drives a placement of the Actor, V-learner and P-learner.

The trainer knows no robot: it is handed a task factory (``train.dclaw`` passes the D'Claw's).
It owns the run directory (config.yaml, metrics.jsonl, TensorBoard events, roles.json and
atomic checkpoints/), the shared state the roles start from, evaluation, and the main loop that
logs, evaluates, checkpoints and stops; where the roles run is the placement's business
(:mod:`toolkit.pql.placement`). Ctrl-C checkpoints, stops every role and returns.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
import yaml

import toolkit
from toolkit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from toolkit.config import PlacementKind, TrainConfig, from_dict, to_dict
from toolkit.contract.calibration import CalibrationError, load_calibration
from toolkit.contract.task import Task
from toolkit.envs.vec_env import VecEnv
from toolkit.logging import RunLogger, progress_detail
from toolkit.pql.evaluate import evaluate, render_episode
from toolkit.pql.placement import Placement, ProcessPlacement, RunContext, SequentialPlacement, Snapshot
from toolkit.pql.ratio import RatioGate
from toolkit.pql.roles import (
    ROLES,
    Dims,
    NormalizerReader,
    Role,
    TrainingError,
    make_actor,
    make_critic,
    make_normalizers,
    make_shared_state,
)
from toolkit.pql.shared import EPISODE_STATS, Counter, SharedState, module_tensors, read_counters
from toolkit.progress import TrainingProgress

#: Evaluation envs are seeded ``seed + EVAL_SEED_OFFSET``: episodes no training env ever saw.
EVAL_SEED_OFFSET = 10_000
#: config.yaml's record of the calibration a run trained with (not an option).
CALIBRATION_KEY = "calibration_used"


@dataclass
class TrainResult:
    run_dir: Path
    counters: dict[str, int]
    eval_success: float
    wall_time_s: float
    stop_reason: str
    checkpoint: Path | None


# --- run directory and initial state ------------------------------------------------------
def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """The config a run of ``cfg`` uses, without touching anything: ``cfg`` itself, or on --resume
    the saved config continued with this invocation's placement, stop and log options."""
    if cfg.resume is None:
        return cfg
    config_path = Path(cfg.resume) / "config.yaml"
    if not config_path.is_file():
        raise CheckpointError(f"cannot resume: '{cfg.resume}' has no config.yaml (is it a run directory?)")
    try:
        saved = yaml.safe_load(config_path.read_text())
        saved.pop(CALIBRATION_KEY, None)  # a record of the calibration, not an option
        saved = from_dict(TrainConfig, saved)
    except (ValueError, TypeError, AttributeError, yaml.YAMLError) as error:
        raise CheckpointError(f"cannot resume: {config_path} is unreadable: {error}") from error
    return saved.resumed_with(cfg, str(cfg.resume))


def prepare_run(cfg: TrainConfig) -> tuple[TrainConfig, Path, dict | None]:
    """Resolve the run directory; on --resume load its config and latest checkpoint and continue
    the saved config with this invocation's placement, stop and log options."""
    if cfg.resume is not None:
        resolved = resolve_config(cfg)
        return resolved, Path(cfg.resume), load_checkpoint(cfg.resume)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.run_dir) if cfg.run_dir else Path("runs") / f"{cfg.env.task}-{stamp}"
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        raise CheckpointError(f"run directory '{run_dir}' already holds checkpoints: pass --resume {run_dir} "
                              "to continue it, or choose another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return cfg, run_dir, None


def calibration_used(cfg: TrainConfig, task: Task, checkpoint: dict | None) -> dict:
    """The summary (hash, file, robot, task, values) of ``cfg.env.calibration``, checked for
    ``task``; ``{}`` without one. On resume the file must still hold what the run trained with."""
    if cfg.env.calibration is None:
        return {}
    try:
        calibration = load_calibration(cfg.env.calibration)
        calibration.check_for(task.robot.name, task.name, task.robot.joint_names)
    except CalibrationError as error:
        raise CheckpointError(f"--calibration: {error}") from None
    used = calibration.describe(cfg.env.calibration)
    recorded = (checkpoint or {}).get("calibration") or {}
    if recorded and recorded.get("hash") != used["hash"]:
        raise CheckpointError(f"cannot resume: the run trained with calibration {recorded.get('hash')}, but "
                              f"{cfg.env.calibration} now holds {used['hash']}: restore the file, or start a new run")
    return used


def record_calibration(run_dir: Path, calibration: dict) -> None:
    """Add the calibration's summary to the run's config.yaml (key ``calibration_used``)."""
    path = run_dir / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    saved[CALIBRATION_KEY] = calibration
    path.write_text(yaml.safe_dump(saved, sort_keys=False))


def initial_role_states(cfg: TrainConfig, dims: Dims, checkpoint: dict | None) -> dict[Role, dict | None]:
    """Network weights every placement starts from (seeded, or from the checkpoint)."""
    if checkpoint is not None:
        actor_state = {"obs_normalizer": checkpoint["obs_normalizer"]}
        if dims.asymmetric:
            actor_state["critic_obs_normalizer"] = checkpoint["critic_obs_normalizer"]
        return {
            Role.ACTOR: actor_state,
            Role.V_LEARNER: {"critic": checkpoint["critic"]["state_dict"], "critic_target": checkpoint["critic_target"],
                             "optimizer": checkpoint["critic_optimizer"]},
            Role.P_LEARNER: {"actor": checkpoint["actor"]["state_dict"], "optimizer": checkpoint["actor_optimizer"]},
        }
    torch.manual_seed(cfg.env.seed)
    actor, critic = make_actor(cfg.pql, dims), make_critic(cfg.pql, dims)
    return {Role.ACTOR: None,
            Role.V_LEARNER: {"critic": critic.state_dict(), "critic_target": critic.state_dict()},
            Role.P_LEARNER: {"actor": actor.state_dict()}}


def _restore_counters(shared: SharedState, checkpoint: dict | None) -> tuple[int, int]:
    shared.counters[Counter.LEARN_START] = -1
    if checkpoint is None:
        return 0, 0
    counters = checkpoint["counters"]
    shared.counters[Counter.ACTOR_STEPS] = counters["actor_steps"]
    shared.counters[Counter.ENV_STEPS] = counters["env_steps"]
    shared.counters[Counter.V_UPDATES] = counters["v_updates"]
    shared.counters[Counter.P_UPDATES] = counters["p_updates"]
    return int(counters["v_updates"]), int(counters["p_updates"])


def _ray_placement() -> type[Placement]:
    from toolkit.pql.ray_placement import RayPlacement  # Ray is imported only when asked for

    return RayPlacement


#: Each placement kind's class.
PLACEMENTS: dict[PlacementKind, Callable[[], type[Placement]]] = {
    PlacementKind.process: lambda: ProcessPlacement,
    PlacementKind.sequential: lambda: SequentialPlacement,
    PlacementKind.ray: _ray_placement,
}


def make_placement(ctx: RunContext, role_states: dict[Role, dict | None]) -> Placement:
    """The placement ``ctx.cfg`` asks for, over ``ctx``."""
    return PLACEMENTS[ctx.cfg.placement.placement]()(ctx, role_states)


# --- the trainer --------------------------------------------------------------------------
class Trainer:
    """Sets up a run of ``cfg`` on the task ``make_task()`` builds, and drives its placement.

    Args:
        cfg: the run's config (``cfg.env.task`` and ``cfg.env.task_options`` name the task in logs and
            checkpoints).
        make_task: a picklable callable returning the task (it crosses into role processes),
            e.g. ``functools.partial(robots.make_task, name, **overrides)``.

    ``cfg.env.calibration`` (a file of ``deploy.calibrate``) makes the fitted model the nominal one
    (the envs apply it; DR scales around it); its hash, file and values go into config.yaml
    (``calibration_used``), every checkpoint and so the exported policy's metadata.
    """

    def __init__(self, cfg: TrainConfig, make_task: Callable[[], Task]) -> None:
        self.cfg, self.run_dir, checkpoint = prepare_run(cfg)
        cfg = self.cfg
        self.make_task = make_task
        self.task = make_task()
        if self.task.name != cfg.env.task:
            raise ValueError(f"the task factory builds '{self.task.name}' but the config names '{cfg.env.task}'")
        # What make_task applies (--task-options), recorded in checkpoints and so in exported policies.
        self.task_overrides = cfg.env.task_overrides()
        self.calibration = calibration_used(self.cfg, self.task, checkpoint)
        if self.calibration and checkpoint is None:
            record_calibration(self.run_dir, self.calibration)
        self.dims = Dims.of(self.task)
        self.gate = RatioGate.for_config(cfg.pql)
        # A Ray run's learners keep their own rings: none here.
        self.shared = make_shared_state(cfg.pql, self.dims, replay=cfg.placement.placement is not PlacementKind.ray,
                                        device=cfg.learner_device())
        self.v_start, self.p_start = _restore_counters(self.shared, checkpoint)
        self.role_states = initial_role_states(cfg, self.dims, checkpoint)
        self.prior_wall_time = float(checkpoint["counters"].get("wall_time_s", 0.0)) if checkpoint else 0.0
        self._publish_initial_weights()
        # The trainer's own view of the policy, for evaluation (on the env's device).
        self.eval_actor = make_actor(cfg.pql, self.dims).to(cfg.env.device).requires_grad_(False)
        self.eval_norms = NormalizerReader(cfg.pql, self.dims, self.shared, cfg.env.device)
        self._eval_env: VecEnv | None = None
        self.logger = RunLogger(self.run_dir, cfg.log.tensorboard)
        self.last_eval: dict[str, float] = {}
        self.last_checkpoint: Path | None = None
        self.progress = TrainingProgress(
            task=cfg.env.task, num_envs=cfg.env.num_envs, placement=cfg.placement.placement.value,
            budget_s=cfg.stop.max_time_s, run_dir=self.run_dir, max_env_steps=cfg.stop.max_env_steps,
            tensorboard=cfg.log.tensorboard, start_wall_time_s=self.prior_wall_time)
        self._videos: EvalVideos | None = EvalVideos(self) if cfg.log.video_interval_s is not None else None

    def context(self) -> RunContext:
        return RunContext(self.cfg, self.dims, self.shared, self.gate, self.v_start, self.p_start, self.make_task,
                          self.run_dir)

    def _publish_initial_weights(self) -> None:
        dims, pql, shared = self.dims, self.cfg.pql, self.shared
        actor, critic = make_actor(pql, dims), make_critic(pql, dims)
        actor.load_state_dict(self.role_states[Role.P_LEARNER]["actor"])
        critic.load_state_dict(self.role_states[Role.V_LEARNER]["critic"])
        shared.actor_board.publish(module_tensors(actor))
        shared.critic_board.publish(module_tensors(critic))
        obs_norm, critic_norm = make_normalizers(pql, dims)
        actor_state = self.role_states[Role.ACTOR]
        if actor_state is not None:
            obs_norm.load_state_dict(actor_state["obs_normalizer"])
            if dims.asymmetric:
                critic_norm.load_state_dict(actor_state["critic_obs_normalizer"])
        shared.obs_norm_board.publish(module_tensors(obs_norm))
        shared.critic_obs_norm_board.publish(module_tensors(critic_norm))

    # --- the duties of every placement ------------------------------------------------
    def counters(self) -> dict[str, int]:
        return read_counters(self.shared.counters)

    def run_evaluation(self) -> dict[str, float]:
        cfg = self.cfg
        if self._eval_env is None:
            eval_config = cfg.env_config(num_envs=cfg.log.eval_envs, seed=cfg.env.seed + EVAL_SEED_OFFSET)
            self._eval_env = VecEnv(self.make_task(), eval_config)
        self.shared.actor_board.read_into(module_tensors(self.eval_actor))
        self.eval_norms.sync()
        norm = self.eval_norms.obs_norm if cfg.pql.normalize_obs else None
        self.last_eval = evaluate(self._eval_env, self.eval_actor, norm, seed=cfg.env.seed + EVAL_SEED_OFFSET)
        return self.last_eval

    def checkpoint_state(self, snapshot: Snapshot, wall_time_s: float) -> dict:
        cfg, dims, states = self.cfg, self.dims, snapshot.states
        v, p, a = states[Role.V_LEARNER], states[Role.P_LEARNER], states[Role.ACTOR]
        state = {
            "toolkit_version": toolkit.__version__,
            "run_name": self.run_dir.name,
            "task": cfg.env.task,
            "task_overrides": self.task_overrides,
            "calibration": self.calibration,
            "config": to_dict(cfg),
            "obs_layout": self.task.obs_layout.to_json(),
            "critic_obs_layout": self.task.critic_obs_layout.to_json(),
            "counters": {**snapshot.counters, "wall_time_s": wall_time_s},
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

    def save(self, snapshot: Snapshot, wall_time_s: float) -> Path:
        """Write a checkpoint of ``snapshot`` (states with the counters they were taken at)."""
        state = self.checkpoint_state(snapshot, wall_time_s)
        self.last_checkpoint = save_checkpoint(self.run_dir, state, state["counters"]["env_steps"])
        return self.last_checkpoint

    def record(self, now: float, start: float, previous: dict) -> dict:
        """Build and write one metrics record; ``previous`` carries the last record's totals."""
        counters = self.counters()
        stats = self.shared.episode_stats.clone()
        elapsed = max(now - previous["time"], 1e-9)
        count = EPISODE_STATS.index("count")
        episodes = float(stats[count] - previous["stats"][count])
        # Means over the episodes finished since the last record (nan when none finished).
        per_episode = (stats - previous["stats"]) / episodes if episodes else torch.full_like(stats, float("nan"))
        stat_names = (*EPISODE_STATS, *self.dims.metrics)
        losses = self.shared.losses
        record = {
            **counters,
            "wall_time_s": self.prior_wall_time + now - start,
            "env_steps_per_s": (counters["env_steps"] - previous["env_steps"]) / elapsed,
            "v_updates_per_s": (counters["v_updates"] - previous["v_updates"]) / elapsed,
            "p_updates_per_s": (counters["p_updates"] - previous["p_updates"]) / elapsed,
            **self.gate.measured(self.shared.counters, self.v_start, self.p_start),
            "episodes": int(stats[count]),
            **{f"episode_{name}": float(mean) for name, mean in zip(stat_names, per_episode, strict=True)
               if name != "count"},
            "critic_loss": float(losses[ROLES[Role.V_LEARNER].loss_slot]),
            "actor_loss": float(losses[ROLES[Role.P_LEARNER].loss_slot]),
            "nan_resets": int(self.shared.counters[Counter.NAN_RESETS]),
            **self.last_eval,
        }
        self.logger.log(record)
        self.progress.update(record, progress_detail(record, self.dims.metrics))
        previous.update(time=now, stats=stats, **counters)
        return record

    def should_stop(self, elapsed: float) -> str | None:
        stop = self.cfg.stop
        if elapsed >= stop.max_time_s:
            return "max_time_s"
        if self.counters()["env_steps"] >= stop.max_env_steps:
            return "max_env_steps"
        success = self.last_eval.get("eval_success", float("nan"))
        if stop.stop_at_success is not None and math.isfinite(success) and success >= stop.stop_at_success:
            return "stop_at_success"
        return None

    # --- running ------------------------------------------------------------------------
    def run(self) -> TrainResult:
        placement = make_placement(self.context(), self.role_states)
        self.progress.start()
        try:
            placement.start()
            stop_reason, wall = self.main_loop(placement, time.perf_counter())
        finally:
            placement.shutdown()
            self.logger.close()
            self.progress.close()
        self.progress.finish(self.last_checkpoint, stop_reason)
        return TrainResult(self.run_dir, self.counters(), self.last_eval.get("eval_success", float("nan")),
                           wall, stop_reason, self.last_checkpoint)

    def main_loop(self, placement: Placement, start: float) -> tuple[str, float]:
        """Log, evaluate, checkpoint and stop, while ``placement`` runs the roles."""
        log = self.cfg.log
        previous = {"time": start, "stats": self.shared.episode_stats.clone(), **self.counters()}
        next_log = start + log.log_interval_s
        next_eval = start + log.eval_interval_s
        next_ckpt = start + log.checkpoint_interval_s
        next_video = start + (log.video_interval_s or 0.0)
        stop_reason = None
        try:
            while stop_reason is None:
                placement.tick()
                now = time.perf_counter()
                learning = self.gate.learning(self.shared.counters)
                if now >= next_eval and learning:
                    try:
                        self.run_evaluation()
                    except ValueError:  # non-finite actions: a role's divergence, which it reports
                        placement.raise_role_failure()
                        raise
                    next_eval = now + log.eval_interval_s
                if self._videos is not None and now >= next_video and learning:
                    self._videos.record()
                    next_video = time.perf_counter() + log.video_interval_s
                if now >= next_log:
                    self.record(now, start, previous)
                    next_log = now + log.log_interval_s
                if now >= next_ckpt and learning:
                    self.save(placement.gather_states(False), self.prior_wall_time + now - start)
                    next_ckpt = now + log.checkpoint_interval_s
                stop_reason = self.should_stop(now - start)
        except KeyboardInterrupt:
            stop_reason = "interrupted"
        wall = self.prior_wall_time + time.perf_counter() - start
        self.save(placement.gather_states(True), wall)
        if stop_reason != "stop_at_success":
            self.run_evaluation()
        self.record(time.perf_counter(), start, previous)
        return stop_reason, wall


class EvalVideos:
    """``--log.video-interval-s``: one greedy evaluation episode rendered to
    ``<run>/videos/eval_<env steps>.mp4`` and to TensorBoard (tag ``eval/video``).

    Rendered in the trainer's process, from its own one-env copy of the evaluation env: never in
    the actor's loop (with the process placement the actor steps on meanwhile). Video must never
    stop training: without OpenGL, or on any rendering or encoding error, it warns once and
    switches itself off.
    """

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.env: VecEnv | None = None
        self.renderer = None
        self.enabled = True
        self.directory = trainer.run_dir / "videos"

    def record(self) -> Path | None:
        if not self.enabled:
            return None
        trainer = self.trainer
        try:
            from toolkit.video import Renderer, VideoWriter

            cfg = trainer.cfg
            if self.env is None:
                self.env = VecEnv(trainer.make_task(), cfg.env_config(num_envs=1, seed=cfg.env.seed + EVAL_SEED_OFFSET))
                self.renderer = Renderer(self.env.model, self.env.task.camera, width=320, height=240)
                self.directory.mkdir(exist_ok=True)
            trainer.shared.actor_board.read_into(module_tensors(trainer.eval_actor))
            trainer.eval_norms.sync()
            norm = trainer.eval_norms.obs_norm if cfg.pql.normalize_obs else None
            frames, outcome = render_episode(self.env, trainer.eval_actor, norm, cfg.env.seed + EVAL_SEED_OFFSET,
                                             self.renderer)
            steps = trainer.counters()["env_steps"]
            fps = 1.0 / self.env.task.robot.control_dt
            path = self.directory / f"eval_{steps:012d}.mp4"
            with VideoWriter(path, fps) as writer:
                for frame in frames:
                    writer.append(frame)
            trainer.logger.video("eval/video", frames, fps, steps)
            return path
        except Exception as error:  # noqa: BLE001 - any video failure: warn once, keep training
            self.enabled = False
            print(f"warning: evaluation videos are off for this run: {type(error).__name__}: "
                  f"{str(error).splitlines()[0] if str(error) else ''}", flush=True)
            return None


def train(cfg: TrainConfig, make_task: Callable[[], Task], **kwargs) -> TrainResult:
    """Train with ``cfg`` on ``make_task()``; raises CheckpointError (bad --resume) or
    TrainingError (role failure)."""
    return Trainer(cfg, make_task, **kwargs).run()


__all__ = ["TrainResult", "Trainer", "TrainingError", "resolve_config", "train"]
