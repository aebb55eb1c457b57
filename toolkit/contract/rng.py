"""Per-env random streams: one counter-based SplitMix64 stream per env, drawn batched.

A single generator shared by all envs makes env i's draws depend on which other envs happen to
reset in the same step. Here env i's draws depend only on its own seed and on how many numbers it
has drawn, so env i of a batch seeded ``s`` replays a single env seeded ``s + i`` exactly
(gymnasium's vector seeding convention), whatever the other envs do.

Written against the array API: the training VecEnv draws with torch tensors, the deployment sim
with numpy arrays, and both get bit-identical numbers for the same seed (which is what lets a
deploy-sim episode reproduce a training env's episode exactly).

The k-th output of stream i is ``mix(key_i + k * GOLDEN)`` with SplitMix64's ``mix`` and
``key_i = mix(seed_i)``: int64 arithmetic (which wraps like uint64 in numpy and torch alike),
no Python loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from array_api_compat import array_namespace

Array = Any


def _signed(value: int) -> int:
    """A uint64 constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= (1 << 63) else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
_INT64_MAX = (1 << 63) - 1


def _shift_right(x, bits: int):
    """Logical right shift of int64 bits (``>>`` on int64 is arithmetic: it copies the sign)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x):
    """SplitMix64's output function on int64 arrays (bit-identical to the uint64 original)."""
    with np.errstate(over="ignore"):
        x = (x ^ _shift_right(x, 30)) * _MIX1
        x = (x ^ _shift_right(x, 27)) * _MIX2
        return x ^ _shift_right(x, 31)


class EnvStreams:
    """``num_envs`` independent uniform streams in the namespace of ``like`` (a numpy array or a
    torch tensor, whose device the streams use; default numpy).

    Attributes:
        key: per-env stream key, int64 (num_envs,).
        counter: numbers drawn so far per env, int64 (num_envs,).
    """

    def __init__(self, num_envs: int, like: Array | None = None) -> None:
        like = np.zeros(0) if like is None else like
        self.xp = xp = array_namespace(like)
        self.device = getattr(like, "device", None)
        self.num_envs = num_envs
        self.key = xp.zeros(num_envs, dtype=xp.int64, device=self.device)
        self.counter = xp.zeros(num_envs, dtype=xp.int64, device=self.device)

    def seed(self, seeds: Array, ids: Array | None = None) -> None:
        """Restart the streams of envs ``ids`` (all: None) from ``seeds``, int64 (k,)."""
        index = slice(None) if ids is None else ids
        seeds = self.xp.asarray(seeds, dtype=self.xp.int64, device=self.device)
        with np.errstate(over="ignore"):
            self.key[index] = mix64(seeds + _GOLDEN)
        self.counter[index] = 0

    def uniform(self, ids: Array | None, shape: Sequence[int]) -> Array:
        """U[0, 1) float64 of ``shape``; row r of the leading dimension comes from the stream
        of env ``ids[r]`` (all envs in order when ``ids`` is None)."""
        xp = self.xp
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
        steps = start[:, None] + xp.arange(1, per_row + 1, dtype=xp.int64, device=self.device)
        with np.errstate(over="ignore"):
            bits = mix64(self.key[index][:, None] + steps * _GOLDEN)
        self.counter[index] = start + per_row
        # The top 53 bits give every float64 in [0, 1) on the 2^-53 grid.
        return xp.reshape(xp.astype(_shift_right(bits, 11), xp.float64) * 2.0**-53, shape)

    def rand_for(self, ids: Array | None):
        """The task protocol's ``rand`` for envs ``ids`` (all: None): ``rand((k, ...))``."""
        return lambda shape: self.uniform(ids, shape)


def env_seeds(seed: int | Sequence[int] | Array, num_envs: int, like: Array | None = None) -> Array:
    """Per-env seeds, int64 (num_envs,) in the namespace of ``like`` (default numpy):
    ``seed + i`` for an int (gymnasium's vector convention), or one given seed per env."""
    xp = array_namespace(np.zeros(0) if like is None else like)
    device = getattr(like, "device", None)
    if isinstance(seed, bool):
        raise TypeError(f"seed must be an int or a sequence of {num_envs} ints, got {seed!r}")
    if isinstance(seed, (int, np.integer)):
        seed = int(seed)
        if not 0 <= seed <= _INT64_MAX - num_envs:
            raise ValueError(f"seed must be in [0, 2**63 - num_envs), got {seed}")
        return seed + xp.arange(num_envs, dtype=xp.int64, device=device)
    values = np.asarray([int(s) if not isinstance(s, bool) else s for s in list(_host(seed))])
    if values.shape != (num_envs,) or values.dtype.kind not in "iu":
        raise ValueError(f"seed must be an int or {num_envs} ints (one per env), got shape {values.shape} "
                         f"of {values.dtype}")
    if (values < 0).any():
        raise ValueError(f"seeds must be non-negative, got {values.tolist()}")
    return xp.asarray(values.astype(np.int64), device=device)


def _host(seed) -> list:
    """A sequence of seeds as a host list (torch tensors and numpy arrays included)."""
    tolist = getattr(seed, "tolist", None)
    return tolist() if callable(tolist) else list(seed)
