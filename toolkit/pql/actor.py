"""The Actor: steps every env with the latest policy plus mixed exploration noise and writes
n-step transitions into the shared replay ring."""

from __future__ import annotations

import torch

from toolkit.config import PQLConfig
from toolkit.envs.vec_env import VecEnv
from toolkit.pql.nstep import NStepWindow
from toolkit.pql.roles import Dims, Role, compute_devices, make_actor, make_normalizers
from toolkit.pql.shared import Counter, SharedState, module_tensors


def mixed_noise_std(num_envs: int, noise_min: float, noise_max: float) -> torch.Tensor:
    """Per-env exploration std (num_envs, 1): env i gets linspace(noise_min, noise_max)[i],
    so a few envs act almost greedily while others explore widely (PQL's mixed exploration)."""
    if not 0 <= noise_min <= noise_max:
        raise ValueError(f"need 0 <= noise_min <= noise_max, got {noise_min}, {noise_max}")
    return torch.linspace(noise_min, noise_max, num_envs, dtype=torch.float32)[:, None]


class ActorRole:
    """Owns the VecEnv and the observation normalizers (it is their only writer)."""

    role = Role.ACTOR

    def __init__(self, cfg: PQLConfig, dims: Dims, shared: SharedState, env: VecEnv, seed: int,
                 state: dict | None = None) -> None:
        self.cfg, self.dims, self.shared, self.env = cfg, dims, shared, env
        self.device = env.device
        self.policy = make_actor(cfg, dims).to(self.device).requires_grad_(False)
        # On the env's device: they normalize its observations every step.
        self.obs_norm, self.critic_norm = (norm.to(self.device) for norm in make_normalizers(cfg, dims))
        if state is not None:
            self.obs_norm.load_state_dict(state["obs_normalizer"])
            if dims.asymmetric:
                self.critic_norm.load_state_dict(state["critic_obs_normalizer"])
        self.sigma = mixed_noise_std(env.num_envs, cfg.noise_min, cfg.noise_max).to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.window = NStepWindow(cfg.nstep, cfg.gamma)
        self.random_warmup = state is None
        self._policy_tensors = module_tensors(self.policy)
        self._policy_version = -1
        self.obs, info = env.reset(seed=seed)
        self.critic_obs = info.get("critic_obs", self.obs)
        self.steps = int(shared.counters[Counter.ACTOR_STEPS])
        self.env_steps = int(shared.counters[Counter.ENV_STEPS])
        self._publish_normalizers()

    def state_dict(self) -> dict:
        state = {"obs_normalizer": self.obs_norm.state_dict()}
        if self.dims.asymmetric:
            state["critic_obs_normalizer"] = self.critic_norm.state_dict()
        return state

    def checked_state_dict(self) -> dict:
        """The state a checkpoint takes (the normalizers; nothing of the actor's can diverge)."""
        return self.state_dict()

    def devices(self) -> dict[str, str]:
        """Where this role computes (its policy's and the replay ring's device)."""
        return compute_devices(self.policy, self.shared.replay)

    def _publish_normalizers(self) -> None:
        self.shared.obs_norm_board.publish(module_tensors(self.obs_norm))
        if self.dims.asymmetric:
            self.shared.critic_obs_norm_board.publish(module_tensors(self.critic_norm))

    @torch.no_grad()
    def act(self, random: bool) -> torch.Tensor:
        n, a = self.env.num_envs, self.dims.action
        if random:
            return torch.rand(n, a, generator=self.generator, device=self.device) * 2 - 1
        self._policy_version = self.shared.actor_board.read_into(self._policy_tensors, self._policy_version)
        obs = self.obs_norm(self.obs) if self.cfg.normalize_obs else self.obs
        action = self.policy(obs)
        noise = torch.randn(action.shape, generator=self.generator, device=self.device) * self.sigma
        return (action + noise).clamp(-1.0, 1.0)

    @torch.no_grad()
    def work(self) -> None:
        """One env step of every env; writes the n-step transitions that became complete."""
        counters = self.shared.counters
        learning = int(counters[Counter.LEARN_START]) >= 0
        # Warm-up of a fresh run explores uniformly; a resumed run refills the ring with its policy.
        action = self.act(random=not learning and self.random_warmup)
        next_obs, reward, terminated, truncated, info = self.env.step(action)
        step = {
            "obs": self.obs,
            "action": action,
            "reward": reward * self.cfg.reward_scale,
            "next_obs": info["final_obs"],
            "terminated": terminated,
            "done": info["done"],
        }
        if self.dims.asymmetric:
            step["critic_obs"] = self.critic_obs
            step["next_critic_obs"] = info["final_critic_obs"]
        transition = self.window.push(step)
        if transition is not None:
            self.shared.replay.write(counters, transition)
        self.obs = next_obs
        self.critic_obs = info.get("critic_obs", next_obs)
        self.obs_norm.update(next_obs)
        if self.dims.asymmetric:
            self.critic_norm.update(self.critic_obs)
        self._publish_normalizers()
        self._record_episodes(info)
        self.steps += 1
        self.env_steps += self.env.num_envs
        counters[Counter.ENV_STEPS] = self.env_steps
        counters[Counter.NAN_RESETS] = int(info["nan_resets"])
        warm = self.steps >= self.cfg.warmup_steps and int(counters[Counter.REPLAY_SIZE]) >= self.cfg.batch_size
        if not learning and warm:
            counters[Counter.LEARN_START] = self.steps
        counters[Counter.ACTOR_STEPS] = self.steps

    def _record_episodes(self, info: dict) -> None:
        """Cumulative shared.EPISODE_STATS and task metrics of finished episodes (readers diff
        them); one host copy per step that ends episodes."""
        if "episode_return" not in info:
            return
        done = info["done"]
        values = [info["episode_return"], info["episode_success"], info["episode_length"], done,
                  *(info["episode_metrics"][name] for name in self.dims.metrics)]
        sums = torch.stack([v[done].to(torch.float64).sum() for v in values])
        self.shared.episode_stats += sums.cpu()
