"""The P-learner: maximises Q(s, pi(s)) under the V-learner's latest critic."""

from __future__ import annotations

import torch

from toolkit.config import PQLConfig
from toolkit.pql.roles import Dims, NormalizerReader, make_actor, make_critic, optimizer_step
from toolkit.pql.shared import C, SharedState, module_tensors


class PLearner:
    """Samples observations, updates the actor, publishes it (the policy that is exported)."""

    name = "P-learner"

    def __init__(self, cfg: PQLConfig, dims: Dims, shared: SharedState, seed: int, state: dict | None = None) -> None:
        self.cfg, self.dims, self.shared = cfg, dims, shared
        self.device = torch.device(cfg.learner_device)
        self.actor = make_actor(cfg, dims).to(self.device)
        self.optimizer = torch.optim.AdamW(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic = make_critic(cfg, dims).to(self.device).requires_grad_(False)  # latest published critic
        self.norms = NormalizerReader(cfg, dims, shared)
        self.generator = torch.Generator().manual_seed(seed)
        self.updates = int(shared.counters[C.P_UPDATES])
        self.last_loss = float("nan")
        if state is not None:
            self.load_state_dict(state)
        self._critic_tensors = module_tensors(self.critic)
        self._critic_version = -1
        self._fields = ["obs", "critic_obs"] if dims.asymmetric else ["obs"]
        self._loss_fn = torch.compile(self._loss) if cfg.compile else self._loss
        self.publish()

    def publish(self) -> None:
        self.shared.actor_board.publish(module_tensors(self.actor))

    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])

    def sync(self) -> None:
        self._critic_version = self.shared.critic_board.read_into(self._critic_tensors, self._critic_version)
        self.norms.sync()

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        action = self.actor(self.norms.obs(batch["obs"]))
        critic_obs = batch["critic_obs"] if self.dims.asymmetric else batch["obs"]
        q1, q2 = self.critic.q_values(self.norms.critic_obs(critic_obs), action)
        return -torch.min(q1, q2).mean()

    def update(self) -> float:
        """One policy update; publishes the actor and bumps the P_UPDATES counter."""
        self.sync()
        replay = self.shared.replay
        idx = replay.sample_indices(self.shared.counters, self.cfg.batch_size, self.generator)
        batch = replay.gather(idx, self._fields, self.device)
        loss = self._loss_fn(batch)
        self.last_loss = optimizer_step(self.optimizer, self.actor, loss, self.cfg.grad_clip, "actor", self.updates)
        self.publish()
        self.updates += 1
        self.shared.counters[C.P_UPDATES] = self.updates
        self.shared.losses[1] = self.last_loss
        return self.last_loss
