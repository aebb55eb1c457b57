"""Running mean/std observation normalizer, shared by all roles and saved with the policy."""

from __future__ import annotations

import torch
from torch import nn


class RunningNorm(nn.Module):
    """y = clip((x - mean) / sqrt(var + eps), -clip, clip) with running statistics.

    Buffers (mean, var, count) are float64 for stable accumulation; ``forward`` returns the
    input's dtype. ``update`` merges a batch (B, D) with the parallel-variance formula.
    """

    def __init__(self, dim: int, clip: float = 5.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.dim, self.clip, self.eps = dim, clip, eps
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64).reshape(-1, self.dim)
        batch_count = x.shape[0]
        if batch_count == 0:
            return
        batch_mean = x.mean(0)
        batch_var = x.var(0, unbiased=False)
        total = self.count + batch_count
        delta = batch_mean - self.mean
        new_mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta.square() * self.count * batch_count / total
        self.mean.copy_(new_mean)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(x.dtype)
        std = torch.sqrt(self.var + self.eps).to(x.dtype)
        return torch.clamp((x - mean) / std, -self.clip, self.clip)
