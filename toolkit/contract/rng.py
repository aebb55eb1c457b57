"""Per-env random streams: one counter-based SplitMix64 stream per env, drawn batched.

A single ``torch.Generator`` shared by all envs makes env i's draws depend on which other envs
happen to reset in the same step. Here env i's draws depend only on its own seed and on how
many numbers it has drawn, so env i of a batch seeded ``s`` replays a single env seeded
``s + i`` exactly (gymnasium's vector seeding convention), whatever the other envs do.

The k-th output of stream i is ``mix(key_i + k * GOLDEN)`` with SplitMix64's ``mix`` and
``key_i = mix(seed_i)``: int64 tensor arithmetic (which wraps like uint64), no Python loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _signed(value: int) -> int:
    """A uint64 constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= (1 << 63) else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
_INT64_MAX = (1 << 63) - 1


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic: it copies the sign)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function on int64 tensors (bit-identical to the uint64 original)."""
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


class EnvStreams:
    """``num_envs`` independent uniform streams.

    Attributes:
        key: per-env stream key, int64 (num_envs,).
        counter: numbers drawn so far per env, int64 (num_envs,).
    """

    def __init__(self, num_envs: int, device: torch.device | str = "cpu") -> None:
        self.num_envs = num_envs
        self.key = torch.zeros(num_envs, dtype=torch.int64, device=device)
        self.counter = torch.zeros(num_envs, dtype=torch.int64, device=device)

    def seed(self, seeds: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Restart the streams of envs ``ids`` (all: None) from ``seeds``, int64 (k,)."""
        ids = slice(None) if ids is None else ids
        self.key[ids] = mix64(seeds.to(self.key) + _GOLDEN)
        self.counter[ids] = 0

    def uniform(self, ids: torch.Tensor | None, shape: Sequence[int]) -> torch.Tensor:
        """U[0, 1) float64 of ``shape``; row r of the leading dimension comes from the stream
        of env ``ids[r]`` (all envs in order when ``ids`` is None)."""
        shape = tuple(int(s) for s in shape)
        rows = self.num_envs if ids is None else len(ids)
        if len(shape) == 0 or shape[0] != rows:
            raise ValueError(f"rand(shape={shape}): the first dimension must be the number of envs drawn for "
                             f"({rows}); draw per-env values as (k, ...), one row per env")
        per_row = 1
        for size in shape[1:]:
            per_row *= size
        index = slice(None) if ids is None else ids
        start = self.counter[index]
        steps = start[:, None] + torch.arange(1, per_row + 1, dtype=torch.int64, device=start.device)
        bits = mix64(self.key[index][:, None] + steps * _GOLDEN)
        self.counter[index] = start + per_row
        # The top 53 bits give every float64 in [0, 1) on the 2^-53 grid.
        return (_shift_right(bits, 11).to(torch.float64) * 2.0**-53).reshape(shape)


def env_seeds(seed: int | Sequence[int] | torch.Tensor, num_envs: int) -> torch.Tensor:
    """Per-env seeds, int64 (num_envs,): ``seed + i`` for an int (gymnasium's vector
    convention), or one given seed per env."""
    if isinstance(seed, bool):
        raise TypeError(f"seed must be an int or a sequence of {num_envs} ints, got {seed!r}")
    if isinstance(seed, int):
        if not 0 <= seed <= _INT64_MAX - num_envs:
            raise ValueError(f"seed must be in [0, 2**63 - num_envs), got {seed}")
        return seed + torch.arange(num_envs, dtype=torch.int64)
    seeds = torch.as_tensor(seed)
    if seeds.shape != (num_envs,) or seeds.is_floating_point() or seeds.dtype == torch.bool:
        raise ValueError(f"seed must be an int or {num_envs} ints (one per env), got shape {tuple(seeds.shape)} "
                         f"of {seeds.dtype}")
    if bool((seeds < 0).any()):
        raise ValueError(f"seeds must be non-negative, got {seeds.tolist()}")
    return seeds.to(torch.int64)
