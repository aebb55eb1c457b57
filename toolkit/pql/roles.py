"""The three PQL roles as a table, and what they have in common: dimensions, networks,
normalizers, the shared state they are built on.

A role is a :class:`Role`; everything that differs between roles and that a placement needs
(its display name, the counter it serves pause requests on, its loss slot, the boards it owns)
is one row of :data:`ROLES`, never a string compared in code.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from toolkit.config import PQLConfig
from toolkit.nn import Actor, DoubleQCritic
from toolkit.normalizer import RunningNorm
from toolkit.pql.shared import Counter, ParamBoard, SharedReplay, SharedState, module_tensors


class Role(enum.Enum):
    ACTOR = "Actor"
    V_LEARNER = "V-learner"
    P_LEARNER = "P-learner"


@dataclass(frozen=True)
class RoleSpec:
    """What a placement needs to know about a role.

    Attributes:
        name: display name (logs, errors, roles.json).
        paused: the counter the role writes when it has served a pause request.
        owned: the counters it is the only writer of (the Ray placement reports these).
        boards: names of the SharedState boards it publishes (SharedState.boards()).
        loss_slot: its index in SharedState.losses (learners).
        seed_offset: added to seed * 1000 for the role's own generators.
    """

    name: str
    paused: Counter
    owned: tuple[Counter, ...]
    boards: tuple[str, ...]
    loss_slot: int | None
    seed_offset: int


ROLES: dict[Role, RoleSpec] = {
    Role.ACTOR: RoleSpec("Actor", Counter.PAUSED_ACTOR,
                         (Counter.ACTOR_STEPS, Counter.ENV_STEPS, Counter.REPLAY_SIZE, Counter.REPLAY_NEXT,
                          Counter.LEARN_START, Counter.NAN_RESETS, Counter.PAUSED_ACTOR),
                         ("obs_norm", "critic_obs_norm"), None, 1),
    Role.V_LEARNER: RoleSpec("V-learner", Counter.PAUSED_V, (Counter.V_UPDATES, Counter.PAUSED_V), ("critic",), 0, 2),
    Role.P_LEARNER: RoleSpec("P-learner", Counter.PAUSED_P, (Counter.P_UPDATES, Counter.PAUSED_P), ("actor",), 1, 3),
}
LEARNERS = (Role.V_LEARNER, Role.P_LEARNER)


class TrainingError(RuntimeError):
    """Training stopped abnormally (a role crashed or died, a loss went non-finite)."""


class NonFiniteLossError(TrainingError):
    """A learner produced a NaN/inf loss; training stops and keeps the last good checkpoint."""


@dataclass(frozen=True)
class Dims:
    """Sizes of the actor observation, critic observation and action; the task's episode metrics."""

    obs: int
    critic_obs: int
    action: int
    asymmetric: bool
    metrics: tuple[str, ...] = ()

    @classmethod
    def of(cls, task) -> Dims:
        """The dimensions of a :class:`~toolkit.contract.task.Task`."""
        return cls(obs=task.obs_layout.size, critic_obs=task.critic_obs_layout.size, action=task.robot.num_joints,
                   asymmetric=task.asymmetric, metrics=tuple(task.metric_names))


def make_actor(cfg: PQLConfig, dims: Dims) -> Actor:
    return Actor(dims.obs, dims.action, cfg.actor_hidden)


def make_critic(cfg: PQLConfig, dims: Dims) -> DoubleQCritic:
    return DoubleQCritic(dims.critic_obs, dims.action, cfg.critic_hidden, cfg.num_atoms, cfg.v_min, cfg.v_max)


def make_normalizers(cfg: PQLConfig, dims: Dims) -> tuple[RunningNorm, RunningNorm]:
    obs_norm = RunningNorm(dims.obs, clip=cfg.obs_clip)
    critic_norm = RunningNorm(dims.critic_obs, clip=cfg.obs_clip) if dims.asymmetric else obs_norm
    return obs_norm, critic_norm


def make_shared_state(cfg: PQLConfig, dims: Dims, share: bool = True, replay: bool = True,
                      device: torch.device | str = "cpu") -> SharedState:
    """Counters, weight boards and (``replay``) the replay ring sized for ``cfg`` and ``dims``, with
    the boards' data and the ring on ``device`` (the learners').

    ``share``: for role processes (CPU shared memory; CUDA tensors cross by IPC); False for one
    process's private copy (a Ray actor's). ``replay=False`` leaves the ring out where nobody
    samples it.
    """
    actor, critic = make_actor(cfg, dims), make_critic(cfg, dims)
    obs_norm, critic_norm = make_normalizers(cfg, dims)
    ring = SharedReplay(cfg.replay_size, dims.obs, dims.action, dims.critic_obs if dims.asymmetric else None,
                        share, device) if replay else None
    return SharedState(ring, *(ParamBoard.for_tensors(module_tensors(m), share, device)
                               for m in (actor, critic, obs_norm, critic_norm)), share=share,
                       num_metrics=len(dims.metrics))


class NormalizerReader:
    """Keeps a role's copies of the actor's observation normalizers current."""

    def __init__(self, cfg: PQLConfig, dims: Dims, shared: SharedState, device: str | torch.device = "cpu") -> None:
        self.enabled = cfg.normalize_obs
        self.obs_norm, self.critic_norm = (norm.to(device) for norm in make_normalizers(cfg, dims))
        self._boards = [(shared.obs_norm_board, module_tensors(self.obs_norm))]
        if dims.asymmetric:
            self._boards.append((shared.critic_obs_norm_board, module_tensors(self.critic_norm)))
        self._versions = [-1] * len(self._boards)

    def sync(self) -> None:
        for i, (board, tensors) in enumerate(self._boards):
            self._versions[i] = board.read_into(tensors, self._versions[i])

    def obs(self, x: torch.Tensor) -> torch.Tensor:
        return self.obs_norm(x) if self.enabled else x

    def critic_obs(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic_norm(x) if self.enabled else x


def compute_devices(network: torch.nn.Module, replay: SharedReplay) -> dict[str, str]:
    """Where a role computes, read off its tensors (roles.json): ``device``, that of its network's
    parameters, and ``replay``, that of the replay ring it writes or samples."""
    return {"device": str(next(network.parameters()).device), "replay": str(replay.obs.device)}


def to_cpu(state):
    """``state`` (nested dicts/lists of tensors, e.g. a role's state_dict) with every tensor on
    the CPU: what crosses a process boundary or goes into a checkpoint, whatever the role's device."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {key: to_cpu(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(to_cpu(value) for value in state)
    return state
