"""State the three PQL roles share: counters, published weights and the replay ring.

Everything lives in shared-memory torch tensors created by the trainer before the role
processes start (``share_memory_()``), so roles exchange data without pickling per step.
Each counter has exactly one writer; readers see whole int64 values. With ``share=False``
the same objects are private to one process: the Ray launcher gives each Ray actor its own
copy and keeps the copies in step through a coordinator (toolkit.pql.ray_launcher).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from enum import IntEnum

import torch
from torch import nn


class C(IntEnum):
    """Indices of the shared int64 counters (writer in brackets)."""

    ACTOR_STEPS = 0  # [actor] env.step calls, each steps every env once
    ENV_STEPS = 1  # [actor] transitions collected (actor steps x num_envs)
    V_UPDATES = 2  # [V-learner]
    P_UPDATES = 3  # [P-learner]
    REPLAY_SIZE = 4  # [actor] valid transitions in the ring
    REPLAY_NEXT = 5  # [actor] next write position
    STOP = 6  # [trainer] 1: every role leaves its loop
    PAUSE = 7  # [trainer] pause request id (roles hand over their state, then wait)
    PAUSED_ACTOR = 8  # [actor] last pause id served
    PAUSED_V = 9  # [V-learner]
    PAUSED_P = 10  # [P-learner]
    LEARN_START = 11  # [actor] actor steps when warm-up ended; learner ratios count from here
    NAN_RESETS = 12  # [actor] envs reset because their physics went non-finite


NUM_COUNTERS = len(C)


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, share: bool) -> torch.Tensor:
    """A zero tensor, in shared memory when ``share`` (visible to spawned role processes)."""
    tensor = torch.zeros(shape, dtype=dtype)
    return tensor.share_memory_() if share else tensor


class ParamBoard:
    """Weights (or buffers) published by one writer, read by others: a seqlock.

    The writer makes the version odd, copies, then makes it even; a reader retries while the
    version is odd or changed during its copy, so it never sees a half-written vector.
    """

    def __init__(self, numel: int, share: bool = True) -> None:
        self.data = _zeros((numel,), torch.float32, share)
        self.version = _zeros((1,), torch.int64, share)

    @classmethod
    def for_tensors(cls, tensors: Iterable[torch.Tensor], share: bool = True) -> ParamBoard:
        return cls(sum(t.numel() for t in tensors), share)

    def publish(self, tensors: Iterable[torch.Tensor]) -> None:
        version = int(self.version[0])
        self.version[0] = version + 1
        offset = 0
        with torch.no_grad():
            for tensor in tensors:
                n = tensor.numel()
                self.data[offset:offset + n].copy_(tensor.detach().reshape(-1))
                offset += n
        self.version[0] = version + 2

    def read_into(self, tensors: list[torch.Tensor], known_version: int = -1) -> int:
        """Copy the newest consistent weights into ``tensors`` unless ``known_version`` is
        current; returns the version read (or ``known_version``)."""
        while True:
            before = int(self.version[0])
            if before == known_version:
                return known_version
            if before % 2:
                time.sleep(0)
                continue
            offset = 0
            with torch.no_grad():
                for tensor in tensors:
                    n = tensor.numel()
                    tensor.copy_(self.data[offset:offset + n].view_as(tensor))
                    offset += n
            if int(self.version[0]) == before:
                return before


def module_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Parameters then buffers of a module, in a fixed order (what a ParamBoard carries)."""
    return list(module.parameters()) + list(module.buffers())


class SharedReplay:
    """A ring of n-step transitions in shared memory; the actor is the only writer.

    Per transition: obs (O), critic_obs (C, only for asymmetric tasks), action (A),
    reward (n-step discounted, scaled), next_obs (O) / next_critic_obs (C) to bootstrap
    from, discount (gamma^k, 0 where the episode terminated). Learners sample uniformly
    among the first ``size`` rows.
    """

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, critic_obs_dim: int | None,
                 share: bool = True) -> None:
        def shared(*shape):
            return _zeros(shape, torch.float32, share)

        self.capacity = capacity
        self.obs = shared(capacity, obs_dim)
        self.next_obs = shared(capacity, obs_dim)
        self.action = shared(capacity, action_dim)
        self.reward = shared(capacity)
        self.discount = shared(capacity)
        self.asymmetric = critic_obs_dim is not None
        self.critic_obs = shared(capacity, critic_obs_dim) if self.asymmetric else self.obs
        self.next_critic_obs = shared(capacity, critic_obs_dim) if self.asymmetric else self.next_obs

    def write(self, counters: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        """Append a batch (B rows per field) at the ring's write position."""
        n = batch["obs"].shape[0]
        start = int(counters[C.REPLAY_NEXT])
        rows = (start + torch.arange(n)) % self.capacity
        for name in ("obs", "next_obs", "action", "reward", "discount"):
            getattr(self, name)[rows] = batch[name].to(torch.float32).cpu()
        if self.asymmetric:
            self.critic_obs[rows] = batch["critic_obs"].to(torch.float32).cpu()
            self.next_critic_obs[rows] = batch["next_critic_obs"].to(torch.float32).cpu()
        counters[C.REPLAY_NEXT] = (start + n) % self.capacity
        counters[C.REPLAY_SIZE] = min(int(counters[C.REPLAY_SIZE]) + n, self.capacity)

    def sample_indices(self, counters: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        size = int(counters[C.REPLAY_SIZE])
        return torch.randint(size, (batch_size,), generator=generator)

    def gather(self, idx: torch.Tensor, fields: Iterable[str], device: torch.device) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name)[idx].to(device, non_blocking=True) for name in fields}


class SharedState:
    """Everything the roles share; built by the trainer, handed to each role process.

    ``replay`` may be None where no role samples it (the trainer of a Ray run).
    """

    def __init__(self, replay: SharedReplay | None, actor_board: ParamBoard, critic_board: ParamBoard,
                 obs_norm_board: ParamBoard, critic_obs_norm_board: ParamBoard, share: bool = True,
                 num_metrics: int = 0) -> None:
        self.counters = _zeros((NUM_COUNTERS,), torch.int64, share)
        # Actor's cumulative episode statistics: [return sum, success sum, length sum, count,
        # then one sum per task episode metric (Task.metric_names)].
        self.episode_stats = _zeros((4 + num_metrics,), torch.float64, share)
        # Last critic and actor losses, written by the learners.
        self.losses = _zeros((2,), torch.float64, share).fill_(float("nan"))
        self.replay = replay
        self.actor_board = actor_board
        self.critic_board = critic_board
        self.obs_norm_board = obs_norm_board
        self.critic_obs_norm_board = critic_obs_norm_board
