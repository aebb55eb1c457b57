"""The batched environment: a task on a batched simulator, with relative joint-position
actions, domain randomization and autoreset. No Python loop over envs anywhere.

Conventions follow gymnasium's vector API (``gymnasium.vector``, "same-step" autoreset):

* ``reset(seed=None) -> obs, info``
* ``step(action) -> obs, reward, terminated, truncated, info``

Shapes (N = num_envs, J = robot joints, O = obs size, C = critic obs size)::

    action      (N, J)  float in [-1, 1]       target = clip(target + scale * action, low, high)
    obs         (N, O)  float32
    reward      (N,)    float32
    terminated  (N,)    bool    failure (object dropped, ...)
    truncated   (N,)    bool    episode length reached, or the physics went non-finite

Autoreset: envs that end inside ``step`` are reset there. ``obs`` then holds their first
observation of the new episode and ``info["final_obs"]`` (N, O) the last observation of the
episode that ended (equal to ``obs`` for envs that did not end). With an asymmetric task
``info["critic_obs"]`` and ``info["final_critic_obs"]`` (N, C) carry the critic's view.

Other ``info`` entries: ``success`` (N,) bool per step; ``done`` (N,) bool; for envs with
``done``: ``episode_return``, ``episode_length``, ``episode_success`` (N,) (success at the
episode's last step), ``episode_metrics`` (dict of task metrics, (N,)); ``success_rate`` (float, last 100 finished episodes); ``nan_reset``
(N,) bool and ``nan_resets`` (int, total) for envs whose physics went non-finite;
``reward_terms`` (dict of (N,) scaled terms).
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces

from toolkit.config import EnvConfig
from toolkit.envs.randomization import DomainRandomizer, standard_normal
from toolkit.envs.task import Task
from toolkit.robot import relative_joint_target
from toolkit.sim import make_sim

_SUCCESS_WINDOW = 100


class VecEnv:
    """``cfg.num_envs`` copies of ``task`` stepped together on ``cfg.sim``."""

    def __init__(self, task: Task, cfg: EnvConfig) -> None:
        if cfg.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {cfg.num_envs}")
        self.task = task
        self.cfg = cfg
        self.num_envs = cfg.num_envs
        model = task.build_model()
        task.bind(model)
        self.model = model
        self.sim = make_sim(cfg.sim, model, cfg.num_envs, device=cfg.device, nthread=cfg.nthread)
        self.device = self.sim.device
        self.substeps = _substeps(task.robot.control_dt, model.opt.timestep)

        n, robot, dev = self.num_envs, task.robot, self.device
        f64 = dict(dtype=torch.float64, device=dev)
        self._actuators = torch.as_tensor(task.indices.actuator_ids, dtype=torch.long, device=dev)
        self.joint_low = torch.tensor(robot.joint_low, **f64)
        self.joint_high = torch.tensor(robot.joint_high, **f64)
        self.action_scale = torch.tensor(robot.action_scale, **f64)
        self.joint_targets = torch.zeros(n, robot.num_joints, **f64)
        self.last_action = torch.zeros(n, robot.num_joints, **f64)
        self._pending_action = torch.zeros(n, robot.num_joints, **f64)
        self.episode_step = torch.zeros(n, dtype=torch.long, device=dev)
        self.episode_return = torch.zeros(n, **f64)
        self._success_history = torch.full((_SUCCESS_WINDOW,), float("nan"), **f64)
        self._success_cursor = 0
        self.nan_resets = 0
        self.task_state: dict[str, torch.Tensor] = {}
        self._all_ids = torch.arange(n, device=dev)

        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(cfg.seed)
        table = task.dr_table() if cfg.randomize else None
        if cfg.randomize and table is None:
            raise ValueError(f"task '{task.name}' has no domain-randomization table; run without randomize")
        self.dr = None if table is None else DomainRandomizer(
            table, self.sim, model, torch.as_tensor(task.indices.dof_ids), self._actuators)

        self.obs_size = task.obs_layout.size
        self.critic_obs_size = task.critic_obs_layout.size
        self.observation_space = spaces.Box(-np.inf, np.inf, (self.obs_size,), np.float32)
        self.critic_observation_space = spaces.Box(-np.inf, np.inf, (self.critic_obs_size,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (robot.num_joints,), np.float32)
        self.single_observation_space, self.single_action_space = self.observation_space, self.action_space
        self._obs = torch.zeros(n, self.obs_size, dtype=torch.float32, device=dev)
        self._critic_obs = self._obs
        self.reset()

    # --- public API ------------------------------------------------------------------
    @property
    def num_actions(self) -> int:
        return self.task.robot.num_joints

    def rand(self, shape: tuple[int, ...]) -> torch.Tensor:
        """U[0, 1) float64 from the env's seeded generator (the task's ``rand``)."""
        return torch.rand(shape, generator=self.generator, dtype=torch.float64, device=self.device)

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, dict]:
        """Reset every env; ``seed`` reseeds the generator (resets, DR and noise)."""
        if seed is not None:
            self.generator.manual_seed(seed)
        self._reset_envs(self._all_ids)
        self._success_history.fill_(float("nan"))
        self._success_cursor = 0
        readings = self.task.read(self.sim)
        self._obs, self._critic_obs = self._observe(readings)
        return self._obs, self._obs_info()

    def step(self, action) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        action = self._check_action(action)
        task, sim = self.task, self.sim
        applied = action
        if self.dr is not None:
            applied = action + self.dr.table.action_noise_std * standard_normal(self.rand, action.shape)
            late = self.dr.values["action_latency"] > 0
            applied, self._pending_action = torch.where(late, self._pending_action, applied), applied
        self.joint_targets = relative_joint_target(self.joint_targets, applied, self.action_scale,
                                                   self.joint_low, self.joint_high)
        sim.ctrl[:, self._actuators] = self.joint_targets
        if self.dr is not None:
            self.dr.push(self.rand)
        sim.step(self.substeps)
        self.last_action = action

        finite = torch.isfinite(sim.qpos).all(dim=1) & torch.isfinite(sim.qvel).all(dim=1)
        readings = task.read(sim)
        terms = task.reward_terms(readings, self.task_state, action, self.joint_targets)
        scaled = {name: task.reward_scales[name] * value for name, value in terms.items()}
        reward = sum(scaled.values())
        success = task.success(readings, self.task_state)
        terminated = task.terminated(readings, self.task_state)
        task.update_goals(readings, self.task_state, success, self.rand)
        self.episode_step += 1
        truncated = self.episode_step >= task.episode_steps

        previous_obs = self._obs
        obs, critic_obs = self._observe(readings)
        nan_reset = ~finite
        if bool(nan_reset.any()):
            # Never keep a non-finite state: zero its reward, end the episode as truncated and
            # hand back the last finite observation as its final one.
            self.nan_resets += int(nan_reset.sum())
            reward = torch.where(nan_reset, 0.0, reward)
            terminated = terminated & finite
            truncated = truncated | nan_reset
            success = success & finite
            obs = torch.where(nan_reset[:, None], previous_obs, obs)
            critic_obs = torch.where(nan_reset[:, None], self._critic_obs, critic_obs) if task.asymmetric else obs
        done = terminated | truncated
        self.episode_return += reward
        info = {
            "success": success,
            "done": done,
            "nan_reset": nan_reset,
            "nan_resets": self.nan_resets,
            "reward_terms": scaled,
            "final_obs": obs,
        }
        if task.asymmetric:
            info["final_critic_obs"] = critic_obs
        if bool(done.any()):
            ids = torch.nonzero(done).flatten()
            info["episode_return"] = self.episode_return.clone()
            info["episode_length"] = self.episode_step.clone()
            info["episode_success"] = success.clone()
            info["episode_metrics"] = {k: v.clone() for k, v in task.episode_metrics(self.task_state).items()}
            self._record_successes(success[ids])
            self._reset_envs(ids)
            readings = task.read(sim)
            fresh_obs, fresh_critic = self._observe(readings)
            obs = torch.where(done[:, None], fresh_obs, obs)
            if task.asymmetric:
                critic_obs = torch.where(done[:, None], fresh_critic, critic_obs)
        self._obs = obs
        self._critic_obs = critic_obs if task.asymmetric else obs
        info["success_rate"] = self.success_rate
        info.update(self._obs_info())
        return obs, reward.to(torch.float32), terminated, truncated, info

    @property
    def success_rate(self) -> float:
        """Success rate of the last (up to) 100 finished episodes (nan before the first)."""
        history = self._success_history[~torch.isnan(self._success_history)]
        return float(history.mean()) if len(history) else float("nan")

    def close(self) -> None:
        self.sim = None

    # --- internals -------------------------------------------------------------------
    def _obs_info(self) -> dict:
        return {"critic_obs": self._critic_obs} if self.task.asymmetric else {}

    def _check_action(self, action) -> torch.Tensor:
        action = torch.as_tensor(action, dtype=torch.float64, device=self.device)
        expected = (self.num_envs, self.num_actions)
        if tuple(action.shape) != expected:
            raise ValueError(f"action has shape {tuple(action.shape)}, expected {expected} "
                             f"(num_envs, num_joints) for task '{self.task.name}'")
        if not bool(torch.isfinite(action).all()):
            bad = torch.nonzero(~torch.isfinite(action).all(dim=1)).flatten().tolist()
            raise ValueError(f"action contains NaN or inf (envs {bad[:10]}); actions must be finite, in [-1, 1]")
        return action

    def _observe(self, readings) -> tuple[torch.Tensor, torch.Tensor]:
        task = self.task
        obs_readings = readings
        if self.dr is not None and task.noisy_readings:
            obs_readings = dict(readings)
            for name, std in task.noisy_readings.items():
                value = readings[name]
                obs_readings[name] = value + std * self.dr.table.obs_noise * standard_normal(self.rand, value.shape)
        obs = task.observe(obs_readings, self.task_state, self.joint_targets, self.last_action).to(torch.float32)
        if not task.asymmetric:
            return obs, obs
        critic = task.critic_observe(readings, self.task_state, self.joint_targets, self.last_action,
                                     task.privileged(self.sim)).to(torch.float32)
        return obs, critic

    def _reset_envs(self, ids: torch.Tensor) -> None:
        sim = self.sim
        sim.reset(ids)
        if self.dr is not None:
            self.dr.sample(ids, self.rand)
        rows = self.task.write_reset(sim, ids, self.rand)
        for name, value in rows.items():
            if name not in self.task_state:
                if len(ids) != self.num_envs:
                    raise RuntimeError(f"task_state '{name}' first appeared in a partial reset")
                self.task_state[name] = value.clone()
            else:
                self.task_state[name][ids] = value
        sim.xfrc_applied[ids] = 0.0
        sim.forward(ids)
        self.joint_targets[ids] = sim.ctrl[ids][:, self._actuators]
        self.last_action[ids] = 0.0
        self._pending_action[ids] = 0.0
        self.episode_step[ids] = 0
        self.episode_return[ids] = 0.0

    def _record_successes(self, successes: torch.Tensor) -> None:
        k = min(len(successes), _SUCCESS_WINDOW)
        slots = (self._success_cursor + torch.arange(k, device=self.device)) % _SUCCESS_WINDOW
        self._success_history[slots] = successes[-k:].to(torch.float64)
        self._success_cursor = (self._success_cursor + k) % _SUCCESS_WINDOW


def _substeps(control_dt: float, timestep: float) -> int:
    substeps = round(control_dt / timestep)
    if substeps < 1 or abs(substeps * timestep - control_dt) > 1e-9:
        raise ValueError(f"control_dt {control_dt} is not a whole number of physics steps of {timestep}")
    return substeps
