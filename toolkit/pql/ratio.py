"""Speed-ratio control from the shared counters (no sleep guesses).

With beta_a:v = 1:Ka (critic updates per actor step) and beta_p:v = 1:Kp (critic updates per
policy update), define the leads, in actor steps and policy updates::

    actor_lead = (actor_steps - learn_start) - (v_updates - v_start) / Ka
    p_lead     = (p_updates - p_start)       - (v_updates - v_start) / Kp

A role may work only while it is less than ``slack`` ahead, and the V-learner only while it is
less than ``slack`` ahead of both others. Some role can always move (no deadlock) and the
ratios stay within ``slack`` of their targets. The sequential mode uses the same gates.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from toolkit.config import PQLConfig
from toolkit.pql.roles import Role
from toolkit.pql.shared import Counter


class RatioGate:
    """Gates of the three roles for a PQL config; counters are the shared int64 tensor."""

    def __init__(self, critic_per_actor: int, critic_per_policy: int, slack: int, batch_size: int) -> None:
        if critic_per_actor < 1 or critic_per_policy < 1:
            raise ValueError("speed ratios must be >= 1 critic update per actor step / policy update")
        if slack < 1:
            raise ValueError(f"ratio_slack must be >= 1 (0 would deadlock), got {slack}")
        self.ka, self.kp, self.slack, self.batch_size = critic_per_actor, critic_per_policy, slack, batch_size

    @classmethod
    def for_config(cls, cfg: PQLConfig) -> RatioGate:
        return cls(cfg.critic_updates_per_actor_step, cfg.critic_updates_per_policy_update, cfg.ratio_slack,
                   cfg.batch_size)

    def may_work(self, role: Role) -> Callable[[torch.Tensor, int, int], bool]:
        """The gate of ``role``: ``gate(counters, v_start, p_start) -> bool``."""
        return {Role.ACTOR: self.actor_may_step, Role.V_LEARNER: self.v_may_update,
                Role.P_LEARNER: self.p_may_update}[role]

    @staticmethod
    def learning(c: torch.Tensor) -> bool:
        return int(c[Counter.LEARN_START]) >= 0

    def leads(self, c: torch.Tensor, v_start: int, p_start: int) -> tuple[float, float]:
        v = int(c[Counter.V_UPDATES]) - v_start
        actor_lead = (int(c[Counter.ACTOR_STEPS]) - int(c[Counter.LEARN_START])) - v / self.ka
        p_lead = (int(c[Counter.P_UPDATES]) - p_start) - v / self.kp
        return actor_lead, p_lead

    def actor_may_step(self, c: torch.Tensor, v_start: int, p_start: int) -> bool:
        if not self.learning(c):
            return True  # warm-up: fill the replay ring
        actor_lead, _ = self.leads(c, v_start, p_start)
        return actor_lead < self.slack

    def v_may_update(self, c: torch.Tensor, v_start: int, p_start: int) -> bool:
        if not self.learning(c) or int(c[Counter.REPLAY_SIZE]) < self.batch_size:
            return False
        actor_lead, p_lead = self.leads(c, v_start, p_start)
        return actor_lead > -self.slack and p_lead > -self.slack

    def p_may_update(self, c: torch.Tensor, v_start: int, p_start: int) -> bool:
        if not self.learning(c) or int(c[Counter.REPLAY_SIZE]) < self.batch_size:
            return False
        _, p_lead = self.leads(c, v_start, p_start)
        return p_lead < self.slack

    def measured(self, c: torch.Tensor, v_start: int, p_start: int) -> dict[str, float]:
        """Measured ratios since learning started: critic updates per actor step and per
        policy update (targets: Ka and Kp)."""
        if not self.learning(c):
            return {"critic_per_actor_step": float("nan"), "critic_per_policy_update": float("nan")}
        actor = int(c[Counter.ACTOR_STEPS]) - int(c[Counter.LEARN_START])
        v = int(c[Counter.V_UPDATES]) - v_start
        p = int(c[Counter.P_UPDATES]) - p_start
        return {"critic_per_actor_step": v / actor if actor else float("nan"),
                "critic_per_policy_update": v / p if p else float("nan")}
