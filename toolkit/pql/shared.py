"""State the three PQL roles share: counters, published weights and the replay ring.

Counters and board versions are small int64 tensors in host shared memory; the data (replay
rows, weights, normalizer statistics) live on the learners' device. On the CPU that is shared
memory (``share_memory_()``); on a GPU the tensors are CUDA tensors, which torch.multiprocessing
hands to spawned role processes through CUDA IPC (the trainer, which created them, keeps them
alive). Roles exchange data without pickling and, on a GPU, without a host round trip: a sampled
batch and a published weight vector never leave the device. Each counter has exactly one writer;
readers see whole int64 values. With ``share=False`` the same objects are private to one process
(a Ray actor's copy).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from enum import IntEnum

import torch
from torch import nn


class Counter(IntEnum):
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


NUM_COUNTERS = len(Counter)

def read_counters(counters: torch.Tensor) -> dict[str, int]:
    """The progress counters a checkpoint and a metrics record carry."""
    return {"actor_steps": int(counters[Counter.ACTOR_STEPS]), "env_steps": int(counters[Counter.ENV_STEPS]),
            "v_updates": int(counters[Counter.V_UPDATES]), "p_updates": int(counters[Counter.P_UPDATES])}


#: The actor's cumulative episode statistics (readers diff them), then one sum per task metric.
EPISODE_STATS = ("return", "success", "length", "count")


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, share: bool, device: torch.device | str = "cpu"
           ) -> torch.Tensor:
    """A zero tensor; on the CPU in shared memory when ``share`` (visible to spawned processes;
    CUDA tensors are shared through CUDA IPC as they are)."""
    tensor = torch.zeros(shape, dtype=dtype, device=device)
    return tensor.share_memory_() if share and tensor.device.type == "cpu" else tensor


def _settle(device: torch.device) -> None:
    """Wait until this process's queued work on ``device`` is done (no-op on the CPU): a version
    or counter another process reads must never run ahead of the data it announces."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


class ParamBoard:
    """Weights (or buffers) published by one writer, read by others: a seqlock.

    The writer makes the version odd, copies (on the data's device; completed before the version
    moves on), then makes it even; a reader retries while the version is odd or changed during
    its copy, so it never sees a half-written vector. The version lives in host shared memory,
    the data on ``device``: a reader on that device copies device to device.
    """

    def __init__(self, numel: int, share: bool = True, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.data = _zeros((numel,), torch.float32, share, self.device)
        self.version = _zeros((1,), torch.int64, share)

    @classmethod
    def for_tensors(cls, tensors: Iterable[torch.Tensor], share: bool = True, device: torch.device | str = "cpu"
                    ) -> ParamBoard:
        return cls(sum(t.numel() for t in tensors), share, device)

    def _views(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        views, offset = [], 0
        for tensor in tensors:
            n = tensor.numel()
            views.append(self.data[offset:offset + n].view(tensor.shape))
            offset += n
        return views

    def publish(self, tensors: Sequence[torch.Tensor]) -> None:
        version = int(self.version[0])
        self.version[0] = version + 1
        with torch.no_grad():
            sources = [t.detach().to(self.device, torch.float32) for t in tensors]
            torch._foreach_copy_(self._views(sources), sources)  # one fused launch on a GPU
        _settle(self.device)
        self.version[0] = version + 2

    def read_into(self, tensors: Sequence[torch.Tensor], known_version: int = -1) -> int:
        """Copy the newest consistent weights into ``tensors`` unless ``known_version`` is
        current; returns the version read (or ``known_version``)."""
        while True:
            before = int(self.version[0])
            if before == known_version:
                return known_version
            if before % 2:
                time.sleep(0)
                continue
            with torch.no_grad():
                views = self._views(tensors)
                for tensor, view in zip(tensors, views, strict=True):
                    tensor.copy_(view)
            if tensors:
                _settle(tensors[0].device)  # the copy has read the data before the version is re-checked
            if int(self.version[0]) == before:
                return before


def module_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Parameters then buffers of a module, in a fixed order (what a ParamBoard carries)."""
    return list(module.parameters()) + list(module.buffers())


#: Fields of a transition in the ring (critic_obs/next_critic_obs only for asymmetric tasks).
TRANSITION_FIELDS = ("obs", "next_obs", "action", "reward", "discount")


class SharedReplay:
    """A ring of n-step transitions on ``device``; the actor is the only writer.

    Per transition: obs (O), critic_obs (C, only for asymmetric tasks), action (A),
    reward (n-step discounted, scaled), next_obs (O) / next_critic_obs (C) to bootstrap
    from, discount (gamma^k, 0 where the episode terminated). Learners sample uniformly
    among the first ``size`` rows, on the ring's device (indices drawn there, gathered there).
    """

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, critic_obs_dim: int | None,
                 share: bool = True, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.capacity = capacity

        def ring(*shape):
            return _zeros(shape, torch.float32, share, self.device)

        try:
            self.obs = ring(capacity, obs_dim)
            self.next_obs = ring(capacity, obs_dim)
            self.action = ring(capacity, action_dim)
            self.reward = ring(capacity)
            self.discount = ring(capacity)
            self.asymmetric = critic_obs_dim is not None
            self.critic_obs = ring(capacity, critic_obs_dim) if self.asymmetric else self.obs
            self.next_critic_obs = ring(capacity, critic_obs_dim) if self.asymmetric else self.next_obs
        except torch.OutOfMemoryError as error:
            row = 2 * obs_dim + action_dim + 2 + (2 * critic_obs_dim if critic_obs_dim else 0)
            size_gib = capacity * row * 4 / 2**30
            raise MemoryError(f"the replay ring of {capacity:,} transitions ({size_gib:.1f} GiB) does not fit on "
                              f"{self.device}: lower --pql.replay-size") from error
        self._offsets = torch.arange(0, dtype=torch.int64, device=self.device)

    def fields(self) -> tuple[str, ...]:
        return TRANSITION_FIELDS + (("critic_obs", "next_critic_obs") if self.asymmetric else ())

    def write(self, counters: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        """Append a batch (B rows per field) at the ring's write position."""
        n = batch["obs"].shape[0]
        if self._offsets.numel() != n:
            self._offsets = torch.arange(n, dtype=torch.int64, device=self.device)
        start = int(counters[Counter.REPLAY_NEXT])
        rows = (self._offsets + start) % self.capacity
        for name in self.fields():
            getattr(self, name)[rows] = batch[name].to(self.device, torch.float32)
        _settle(self.device)  # the rows are there before the counters announce them
        counters[Counter.REPLAY_NEXT] = (start + n) % self.capacity
        counters[Counter.REPLAY_SIZE] = min(int(counters[Counter.REPLAY_SIZE]) + n, self.capacity)

    def sample_indices(self, counters: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Uniform row indices (batch_size,) on the ring's device (``generator`` lives there too)."""
        size = int(counters[Counter.REPLAY_SIZE])  # host shared memory: no device sync
        return torch.randint(size, (batch_size,), generator=generator, device=self.device)

    def gather(self, idx: torch.Tensor, fields: Iterable[str], device: torch.device) -> dict[str, torch.Tensor]:
        """The rows ``idx`` of ``fields``, on ``device`` (the ring's own: no copy between devices)."""
        return {name: getattr(self, name)[idx].to(device, non_blocking=True) for name in fields}


class SharedState:
    """Everything the roles share; built by the trainer, handed to each role process.

    ``replay`` may be None where no role samples it (the trainer of a Ray run).
    """

    def __init__(self, replay: SharedReplay | None, actor_board: ParamBoard, critic_board: ParamBoard,
                 obs_norm_board: ParamBoard, critic_obs_norm_board: ParamBoard, share: bool = True,
                 num_metrics: int = 0) -> None:
        self.counters = _zeros((NUM_COUNTERS,), torch.int64, share)
        # The actor's cumulative EPISODE_STATS, then one sum per task episode metric (Task.metric_names).
        self.episode_stats = _zeros((len(EPISODE_STATS) + num_metrics,), torch.float64, share)
        # Last losses read back by each learner, indexed by its role's loss slot (roles.ROLES).
        self.losses = _zeros((2,), torch.float64, share).fill_(float("nan"))
        self.replay = replay
        self.actor_board = actor_board
        self.critic_board = critic_board
        self.obs_norm_board = obs_norm_board
        self.critic_obs_norm_board = critic_obs_norm_board

    def boards(self) -> dict[str, ParamBoard]:
        """Every board by name ("actor", "critic", "obs_norm", "critic_obs_norm")."""
        return {"actor": self.actor_board, "critic": self.critic_board, "obs_norm": self.obs_norm_board,
                "critic_obs_norm": self.critic_obs_norm_board}
