"""Networks: the deterministic actor (exported to ONNX) and the double-Q critic (optionally C51)."""

from __future__ import annotations

import torch
from torch import nn


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> nn.Sequential:
    """Linear-ELU stack (PQL's networks): in -> hidden... -> out."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ELU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """pi(s): normalized observation (B, O) -> action (B, A) in [-1, 1] (tanh)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.obs_dim, self.action_dim, self.hidden = obs_dim, action_dim, tuple(hidden)
        self.net = mlp(obs_dim, self.hidden, action_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs))


class DoubleQCritic(nn.Module):
    """Two independent Q networks on (normalized critic obs (B, C), action (B, A)).

    With ``num_atoms == 1`` each head returns Q-values (B,); with C51 (``num_atoms > 1``)
    each returns logits (B, num_atoms) over the fixed support ``linspace(v_min, v_max)``.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden: tuple[int, ...], num_atoms: int = 1,
                 v_min: float = -10.0, v_max: float = 10.0) -> None:
        super().__init__()
        self.obs_dim, self.action_dim, self.hidden = obs_dim, action_dim, tuple(hidden)
        self.num_atoms = num_atoms
        self.q1 = mlp(obs_dim + action_dim, self.hidden, num_atoms)
        self.q2 = mlp(obs_dim + action_dim, self.hidden, num_atoms)
        self.register_buffer("support", torch.linspace(v_min, v_max, num_atoms) if num_atoms > 1 else torch.zeros(1))

    @property
    def distributional(self) -> bool:
        return self.num_atoms > 1

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, action], dim=-1)
        q1, q2 = self.q1(x), self.q2(x)
        if self.distributional:
            return q1, q2
        return q1.squeeze(-1), q2.squeeze(-1)

    def q_values(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Expected Q of both heads, (B,) each (the mean of the distribution for C51)."""
        q1, q2 = self(obs, action)
        if self.distributional:
            return (torch.softmax(q1, -1) * self.support).sum(-1), (torch.softmax(q2, -1) * self.support).sum(-1)
        return q1, q2
