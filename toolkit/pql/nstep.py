"""n-step transitions, built by the actor for all envs at once.

For a window of the last n steps of every env (oldest first) the transition that starts
at the oldest step is::

    reward   = sum_{k < m} gamma^k r_k          m = steps up to and including the first end
    next_obs = the observation after step m-1   (the final observation if the episode ended)
    discount = gamma^m, or 0 if step m-1 terminated (truncation still bootstraps)

so the learner's target is ``reward + discount * Q(next_obs, pi(next_obs))`` with n and gamma
taken from one place. A loop over the n window slots, never over envs.
"""

from __future__ import annotations

import torch


class NStepWindow:
    """Rolling window of the last ``n`` steps of ``num_envs`` envs."""

    def __init__(self, n: int, gamma: float) -> None:
        if n < 1:
            raise ValueError(f"nstep must be >= 1, got {n}")
        self.n, self.gamma = n, gamma
        self._steps: list[dict[str, torch.Tensor]] = []

    def push(self, step: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Add one step and return the n-step transitions that start n-1 steps ago.

        ``step`` holds (N, ...) tensors: obs, action, reward, next_obs, terminated, done
        (and critic_obs/next_critic_obs for asymmetric tasks). ``next_obs`` is the final
        observation of envs whose episode ended. Returns None until n steps were pushed.
        """
        self._steps.append(step)
        if len(self._steps) < self.n:
            return None
        window, self._steps = self._steps, self._steps[1:]
        return nstep_transition(window, self.gamma)


def nstep_transition(window: list[dict[str, torch.Tensor]], gamma: float) -> dict[str, torch.Tensor]:
    """The n-step transitions that start at ``window[0]`` (see the module docstring)."""
    first = window[0]
    alive = torch.ones_like(first["reward"], dtype=torch.bool)
    reward = torch.zeros_like(first["reward"])
    discount = torch.zeros_like(first["reward"])
    boot = {name: torch.zeros_like(first[name]) for name in first if name.startswith("next_")}
    for k, step in enumerate(window):
        reward = reward + torch.where(alive, gamma ** k * step["reward"], 0.0)
        step_discount = torch.where(step["terminated"], 0.0, gamma ** (k + 1))
        discount = torch.where(alive, step_discount, discount)
        for name in boot:
            boot[name] = torch.where(alive.unsqueeze(-1), step[name], boot[name])
        alive = alive & ~step["done"]
    out = {"obs": first["obs"], "action": first["action"], "reward": reward, "discount": discount, **boot}
    if "critic_obs" in first:
        out["critic_obs"] = first["critic_obs"]
    return out
