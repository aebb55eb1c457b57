"""The V-learner: double-Q critic from n-step TD targets (optionally C51)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from toolkit.config import PQLConfig
from toolkit.pql.learner import Learner
from toolkit.pql.roles import Dims, Role, make_actor, make_critic
from toolkit.pql.shared import Counter, SharedState, module_tensors


def project_distribution(probs: torch.Tensor, reward: torch.Tensor, discount: torch.Tensor,
                         support: torch.Tensor) -> torch.Tensor:
    """C51 projection of the distribution of ``reward + discount * Z`` onto ``support``.

    probs (B, K) over support (K,) (evenly spaced); reward, discount (B,); returns (B, K).
    Mass that falls exactly on an atom stays there; mass outside [v_min, v_max] is clipped
    to the edge atoms.
    """
    v_min, v_max, k = float(support[0]), float(support[-1]), support.numel()
    delta = (v_max - v_min) / (k - 1)
    target_z = (reward[:, None] + discount[:, None] * support[None, :]).clamp(v_min, v_max)
    b = (target_z - v_min) / delta
    lower, upper = b.floor().long(), b.ceil().long()
    # Where b is integral lower == upper; give its whole mass to that atom.
    upper_weight = b - lower.to(b.dtype)
    lower_weight = 1.0 - upper_weight
    projected = torch.zeros_like(probs)
    projected.scatter_add_(1, lower, probs * lower_weight)
    projected.scatter_add_(1, upper, probs * upper_weight)
    return projected


class VLearner(Learner):
    """Samples the replay ring, updates the critic, publishes it and its update count."""

    role, what, counter = Role.V_LEARNER, "critic", Counter.V_UPDATES

    def __init__(self, cfg: PQLConfig, dims: Dims, shared: SharedState, seed: int, state: dict | None = None,
                 device: str = "cpu") -> None:
        super().__init__(cfg, dims, shared, seed, device)
        self.critic = self.trained = make_critic(cfg, dims).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self._params, self._target_params = list(self.critic.parameters()), list(self.critic_target.parameters())
        self.optimizer = torch.optim.AdamW(self.critic.parameters(), lr=cfg.critic_lr, foreach=True)
        self.policy = make_actor(cfg, dims).to(self.device).requires_grad_(False)  # latest published actor
        self._policy_tensors = module_tensors(self.policy)
        self._policy_version = -1
        self.fields = ["obs", "action", "reward", "discount", "next_obs"]
        if dims.asymmetric:
            self.fields += ["critic_obs", "next_critic_obs"]
        self._ready(state)

    def publish(self) -> None:
        self.shared.critic_board.publish(module_tensors(self.critic))

    def state_dict(self) -> dict:
        return {"critic": self.critic.state_dict(), "critic_target": self.critic_target.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg, norms = self.cfg, self.norms
        critic_obs = batch["critic_obs"] if self.dims.asymmetric else batch["obs"]
        next_critic_obs = batch["next_critic_obs"] if self.dims.asymmetric else batch["next_obs"]
        obs_c, next_obs_c = norms.critic_obs(critic_obs), norms.critic_obs(next_critic_obs)
        reward, discount = batch["reward"], batch["discount"]
        with torch.no_grad():
            next_action = self.policy(norms.obs(batch["next_obs"]))
            noise = (torch.randn_like(next_action) * cfg.target_noise_std).clamp(-cfg.target_noise_clip,
                                                                                 cfg.target_noise_clip)
            next_action = (next_action + noise).clamp(-1.0, 1.0)
            if self.critic.distributional:
                logits1, logits2 = self.critic_target(next_obs_c, next_action)
                p1, p2 = torch.softmax(logits1, -1), torch.softmax(logits2, -1)
                support = self.critic.support
                # Clipped double Q for distributions: take, per sample, the head whose mean is
                # lower (an element-wise min of two distributions is not a distribution).
                pick_first = ((p1 * support).sum(-1) <= (p2 * support).sum(-1))[:, None]
                target = project_distribution(torch.where(pick_first, p1, p2), reward, discount, support)
            else:
                q1, q2 = self.critic_target(next_obs_c, next_action)
                target = reward + discount * torch.min(q1, q2)
        current1, current2 = self.critic(obs_c, batch["action"])
        if self.critic.distributional:
            return -(target * F.log_softmax(current1, -1)).sum(-1).mean() - (
                target * F.log_softmax(current2, -1)).sum(-1).mean()
        return F.mse_loss(current1, target) + F.mse_loss(current2, target)

    def sync(self) -> None:
        self._policy_version = self.shared.actor_board.read_into(self._policy_tensors, self._policy_version)
        self.norms.sync()

    @torch.no_grad()
    def after_step(self) -> None:
        """Soft update of the target critic."""
        torch._foreach_lerp_(self._target_params, self._params, self.cfg.tau)
