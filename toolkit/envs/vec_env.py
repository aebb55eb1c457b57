"""The batched environment: a task on a batched simulator, with relative joint-position
actions, domain randomization and autoreset. No Python loop over envs anywhere.

Conventions follow gymnasium's vector API (:class:`gymnasium.vector.VectorEnv`, with
``metadata["autoreset_mode"] = AutoresetMode.SAME_STEP``); arrays are torch tensors on
``env.device``:

* ``reset(seed=None, options=None) -> obs, info``
* ``step(action) -> obs, reward, terminated, truncated, info``

Shapes (N = num_envs, J = robot joints, O = obs size, C = critic obs size)::

    action      (N, J)  finite floats; clipped to [-1, 1], then
                        target = clip(target + action_scale * action, joint_low, joint_high)
    obs         (N, O)  float32
    reward      (N,)    float32
    terminated  (N,)    bool    failure (object dropped, ...)
    truncated   (N,)    bool    episode length reached, or the physics went unstable

Spaces: ``single_observation_space`` Box (O,), ``observation_space`` Box (N, O),
``single_action_space`` Box [-1, 1] (J,), ``action_space`` Box (N, J), all float32; likewise
``single_critic_observation_space`` (C,) and ``critic_observation_space`` (N, C).

Autoreset ("same-step"): envs whose episode ends inside ``step`` are reset there. ``obs`` then
holds their first observation of the new episode and ``info["final_obs"]`` (N, O) the last
observation of the episode that ended (equal to ``obs`` for envs that did not end;
``info["_final_obs"]`` is the (N,) mask of envs that ended). With an asymmetric task
``info["critic_obs"]`` and ``info["final_critic_obs"]`` (N, C) carry the critic's view.

Other ``info`` entries: ``success`` (N,) bool per step; ``done`` (N,) bool; when any env is
done: ``episode_return`` (N,) float64, ``episode_length`` (N,) int64, ``episode_success`` (N,)
bool (success at the episode's last step) and ``episode_metrics`` (dict of task metrics, (N,)),
meaningful for the envs with ``done``; ``success_rate`` (float, last 100 finished episodes, nan
before the first); ``nan_reset`` (N,) bool for envs whose physics went unstable this step
(reset, reward 0, truncated, ``final_obs`` = their last finite observation) and
``nan_resets`` (int, running total); ``reward_terms`` (dict of (N,) scaled terms).

Seeding: every env draws from its own stream (:mod:`toolkit.contract.rng`); env i of an env
seeded ``s`` (``EnvConfig.seed`` or ``reset(seed=s)``) behaves exactly like env 0 of a
single env seeded ``s + i``. Resets, domain randomization and DR noise all use these streams.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from toolkit.config import EnvConfig
from toolkit.contract import step as task_step
from toolkit.contract.calibration import LatencyLine, calibration_targets, load_calibration
from toolkit.contract.dr import DomainRandomizer
from toolkit.contract.rng import EnvStreams, env_seeds
from toolkit.contract.task import Task
from toolkit.sim import make_sim

_SUCCESS_WINDOW = 100


class VecEnv(VectorEnv):
    """``cfg.num_envs`` copies of ``task`` stepped together on ``cfg.sim``."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, task: Task, cfg: EnvConfig) -> None:
        if cfg.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {cfg.num_envs}: set EnvConfig.num_envs (--num-envs) "
                             "to the number of envs to simulate")
        self.task = task
        self.cfg = cfg
        self.num_envs = cfg.num_envs
        model = task.build_model()
        task.bind(model)
        self.substeps, model.opt.timestep = task_step.substeps(task.robot.control_dt, model.opt.timestep)
        self.model = model
        self.sim = make_sim(cfg.sim, model, cfg.num_envs, device=cfg.device, nthread=cfg.nthread)
        self.device = self.sim.device

        n, robot, dev = self.num_envs, task.robot, self.device
        f64 = dict(dtype=torch.float64, device=dev)
        self._actuators = torch.as_tensor(task.indices.actuator_ids, dtype=torch.long, device=dev)
        self.joint_low = torch.tensor(robot.joint_low, **f64)
        self.joint_high = torch.tensor(robot.joint_high, **f64)
        self.action_scale = torch.tensor(robot.action_scale, **f64)
        #: Position targets in force, (N, J) float64 rad.
        self.joint_targets = torch.zeros(n, robot.num_joints, **f64)
        #: The previous action as applied (clipped to [-1, 1]), (N, J).
        self.last_action = torch.zeros(n, robot.num_joints, **f64)
        self.episode_step = torch.zeros(n, dtype=torch.long, device=dev)
        self.episode_return = torch.zeros(n, **f64)
        self._success_history = torch.full((_SUCCESS_WINDOW,), float("nan"), **f64)
        self._success_cursor = 0
        self.nan_resets = 0
        self.task_state: dict[str, torch.Tensor] = {}
        self._all_ids = torch.arange(n, device=dev)

        #: One random stream per env (resets, DR values, DR noise).
        self.streams = EnvStreams(n, self.joint_targets)
        self.streams.seed(env_seeds(cfg.seed, n))
        #: The calibration (``cfg.calibration``) whose fitted scales are the nominal model (applied
        #: before the randomizer takes its nominal values: DR scales around the fit), and whose
        #: action latency delays the joint targets on their way to the actuators.
        self.calibration = None
        self._latency: LatencyLine | None = None
        if cfg.calibration is not None:
            self.calibration = load_calibration(cfg.calibration)
            self.calibration.check_for(robot.name, task.name, robot.joint_names)
            self.calibration.apply(self.sim, calibration_targets(model, task))
            if self.calibration.action_latency:
                self._latency = LatencyLine(self.calibration.action_latency, self.joint_targets)
        table = task.dr_table() if cfg.randomize else None
        if cfg.randomize and table is None:
            raise ValueError(f"task '{task.name}' has no domain-randomization table; run without randomize")
        #: Domain randomization (None without ``cfg.randomize``); ``dr.values`` holds the
        #: per-env values in force, for logging.
        self.dr = None if table is None else DomainRandomizer(
            table, self.sim, model, task.indices.dof_ids, task.indices.actuator_ids)

        self.obs_size = task.obs_layout.size
        self.critic_obs_size = task.critic_obs_layout.size
        self.single_observation_space = _box(-np.inf, np.inf, (self.obs_size,))
        self.single_critic_observation_space = _box(-np.inf, np.inf, (self.critic_obs_size,))
        self.single_action_space = _box(-1.0, 1.0, (robot.num_joints,))
        self.observation_space = _box(-np.inf, np.inf, (n, self.obs_size))
        self.critic_observation_space = _box(-np.inf, np.inf, (n, self.critic_obs_size))
        self.action_space = _box(-1.0, 1.0, (n, robot.num_joints))
        self._obs = torch.zeros(n, self.obs_size, dtype=torch.float32, device=dev)
        self._critic_obs = self._obs
        self.reset()

    # --- public API ------------------------------------------------------------------
    @property
    def num_actions(self) -> int:
        return self.task.robot.num_joints

    def rand(self, shape: Sequence[int]) -> torch.Tensor:
        """U[0, 1) float64 of ``shape`` = (N, ...): row i from env i's stream (the task's ``rand``)."""
        return self.streams.uniform(None, shape)

    def rand_for(self, ids: torch.Tensor):
        """The task's ``rand`` for envs ``ids``: ``rand((len(ids), ...))``, row r from env ids[r]."""
        return lambda shape: self.streams.uniform(ids, shape)

    def reset(self, seed: int | Sequence[int] | None = None, options: dict | None = None
              ) -> tuple[torch.Tensor, dict]:
        """Reset every env. ``seed``: an int (env i gets ``seed + i``) or one int per env
        restarts the envs' random streams; None continues them. Returns obs (N, O) and info
        (``critic_obs`` for asymmetric tasks)."""
        if options:
            raise ValueError(f"VecEnv.reset takes no options, got {sorted(options)}")
        if seed is not None:
            self.streams.seed(env_seeds(seed, self.num_envs))
        self._reset_envs(self._all_ids)
        self._success_history.fill_(float("nan"))
        self._success_cursor = 0
        self._success_rate = float("nan")
        self._obs, self._critic_obs = self._observe(self.task.read(self.sim))
        return self._obs, self._obs_info()

    def step(self, action) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Apply ``action`` (N, J) for one control step; see the module docstring."""
        action = self._check_action(action).clamp(-1.0, 1.0)
        task, sim = self.task, self.sim
        self.joint_targets = task_step.next_joint_targets(self.joint_targets, action, self.action_scale,
                                                          self.joint_low, self.joint_high, self.dr, self.rand)
        acting = self.joint_targets if self._latency is None else self._latency.push(self.joint_targets)
        sim.ctrl[:, self._actuators] = acting.to(sim.ctrl.dtype)
        if self.dr is not None:
            self.dr.push(sim.xfrc_applied, self.rand)
        sim.step(self.substeps)
        self.last_action = action

        # MuJoCo resets an unstable simulation itself (finite again, but not a task state):
        # the backend reports those; a non-finite state left in place is caught here.
        unstable = ~(torch.isfinite(sim.qpos).all(dim=1) & torch.isfinite(sim.qvel).all(dim=1))
        unstable |= sim.diverged().to(unstable.device)
        readings = task.read(sim)
        outcome = task_step.task_step(task, readings, self.task_state, action, self.joint_targets, self.rand)
        reward, scaled, success, terminated = outcome.reward, outcome.terms, outcome.success, outcome.terminated
        self.episode_step += 1
        truncated = self.episode_step >= task.episode_steps

        previous_obs, previous_critic = self._obs, self._critic_obs
        obs, critic_obs = self._observe(readings)
        if bool(unstable.any()):
            # Never hand out an unstable state: zero its reward (and terms), end the episode as
            # truncated and give the last finite observation as its final one.
            self.nan_resets += int(unstable.sum())
            reward = torch.where(unstable, 0.0, reward)
            scaled = {name: torch.where(unstable, 0.0, value) for name, value in scaled.items()}
            terminated = terminated & ~unstable
            truncated = truncated | unstable
            success = success & ~unstable
            obs = torch.where(unstable[:, None], previous_obs, obs)
            critic_obs = torch.where(unstable[:, None], previous_critic, critic_obs) if task.asymmetric else obs
        done = terminated | truncated
        self.episode_return += reward
        info = {
            "success": success,
            "done": done,
            "nan_reset": unstable,
            "nan_resets": self.nan_resets,
            "reward_terms": scaled,
            "final_obs": obs,
            "_final_obs": done,
        }
        if task.asymmetric:
            info["final_critic_obs"] = critic_obs
        if bool(done.any()):
            ids = torch.nonzero(done).flatten()
            info["episode_return"] = self.episode_return.clone()
            info["episode_length"] = self.episode_step.clone()
            info["episode_success"] = success.clone()
            info["episode_metrics"] = {k: v.clone() for k, v in outcome.metrics.items()}
            self._record_successes(success[ids])
            self._reset_envs(ids)
            # Out of place: info["final_obs"] keeps the observations that ended the episodes.
            fresh_obs, fresh_critic = self._observe(task.read(sim), ids)
            obs = obs.index_copy(0, ids, fresh_obs)
            if task.asymmetric:
                critic_obs = critic_obs.index_copy(0, ids, fresh_critic)
        self._obs = obs
        self._critic_obs = critic_obs if task.asymmetric else obs
        info["success_rate"] = self.success_rate
        info.update(self._obs_info())
        return obs, reward.to(torch.float32), terminated, truncated, info

    @property
    def success_rate(self) -> float:
        """Success rate of the last (up to) 100 finished episodes (nan before the first)."""
        return self._success_rate

    def close_extras(self, **kwargs) -> None:
        self.sim = None

    # --- internals -------------------------------------------------------------------
    def _obs_info(self) -> dict:
        return {"critic_obs": self._critic_obs} if self.task.asymmetric else {}

    def _check_action(self, action) -> torch.Tensor:
        expected = (self.num_envs, self.num_actions)
        try:
            action = torch.as_tensor(action, dtype=torch.float64, device=self.device)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"action must be a numeric array of shape {expected} (num_envs, num_joints), "
                            f"got {type(action).__name__}: {error}") from error
        if tuple(action.shape) != expected:
            hint = " (a single env's action: add the env dimension, action[None])" if action.ndim == 1 else ""
            raise ValueError(f"action has shape {tuple(action.shape)}, expected {expected} "
                             f"(num_envs, num_joints) for task '{self.task.name}'{hint}")
        finite = torch.isfinite(action).all(dim=1)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten().tolist()
            raise ValueError(f"action contains NaN or inf (envs {bad[:10]}); actions must be finite, in [-1, 1]: "
                             "check the policy's output (and its observation normalizer) for NaN")
        return action

    def _observe(self, readings, ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Observations (k, O) and critic observations (k, C) of envs ``ids`` (all: None),
        with DR observation noise drawn from those envs' streams."""
        task = self.task
        state, targets, last = self.task_state, self.joint_targets, self.last_action
        rand = self.rand
        privileged = task.privileged(self.sim) if task.asymmetric else {}
        if ids is not None:
            readings = {name: value[ids] for name, value in readings.items()}
            state = {name: value[ids] for name, value in state.items()}
            privileged = {name: value[ids] for name, value in privileged.items()}
            targets, last, rand = targets[ids], last[ids], self.rand_for(ids)
        obs = task_step.observe(task, readings, state, targets, last, self.dr, rand).to(torch.float32)
        if not task.asymmetric:
            return obs, obs
        critic = task.critic_observe(readings, state, targets, last, privileged).to(torch.float32)
        return obs, critic

    def _reset_envs(self, ids: torch.Tensor) -> None:
        sim, rand = self.sim, self.rand_for(ids)
        sim.reset(ids)
        if self.dr is not None:
            self.dr.sample(ids, rand)
        rows = self.task.write_reset(sim, ids, rand)
        for name, value in rows.items():
            if name not in self.task_state:
                if len(ids) != self.num_envs:
                    raise RuntimeError(f"task_state '{name}' first appeared in a partial reset")
                self.task_state[name] = value.clone()
            else:
                self.task_state[name][ids] = value
        sim.xfrc_applied[ids] = 0.0
        sim.forward(ids)
        self.joint_targets[ids] = sim.ctrl[ids][:, self._actuators].to(self.joint_targets.dtype)
        if self._latency is not None:
            self._latency.reset(self.joint_targets[ids], ids)
        self.last_action[ids] = 0.0
        self.episode_step[ids] = 0
        self.episode_return[ids] = 0.0

    def _record_successes(self, successes: torch.Tensor) -> None:
        k = min(len(successes), _SUCCESS_WINDOW)
        slots = (self._success_cursor + torch.arange(k, device=self.device)) % _SUCCESS_WINDOW
        self._success_history[slots] = successes[-k:].to(torch.float64)
        self._success_cursor = (self._success_cursor + k) % _SUCCESS_WINDOW
        # Computed here, when episodes end, rather than on every step (a device sync each time).
        self._success_rate = float(self._success_history.nanmean())


def _box(low: float, high: float, shape: tuple[int, ...]) -> spaces.Box:
    return spaces.Box(low, high, shape, np.float32)

