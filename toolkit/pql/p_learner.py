"""The P-learner: maximises Q(s, pi(s)) under the V-learner's latest critic."""

from __future__ import annotations

import torch

from toolkit.config import PQLConfig
from toolkit.pql.learner import Learner
from toolkit.pql.roles import Dims, Role, make_actor, make_critic
from toolkit.pql.shared import Counter, SharedState, module_tensors


class PLearner(Learner):
    """Samples observations, updates the actor, publishes it (the policy that is exported)."""

    role, what, counter = Role.P_LEARNER, "actor", Counter.P_UPDATES

    def __init__(self, cfg: PQLConfig, dims: Dims, shared: SharedState, seed: int, state: dict | None = None,
                 device: str = "cpu") -> None:
        super().__init__(cfg, dims, shared, seed, device)
        self.actor = self.trained = make_actor(cfg, dims).to(self.device)
        self.optimizer = torch.optim.AdamW(self.actor.parameters(), lr=cfg.actor_lr, foreach=True)
        self.critic = make_critic(cfg, dims).to(self.device).requires_grad_(False)  # latest published critic
        self._critic_tensors = module_tensors(self.critic)
        self._critic_version = -1
        self.fields = ["obs", "critic_obs"] if dims.asymmetric else ["obs"]
        self._ready(state)

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
