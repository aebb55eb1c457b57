"""What the three roles have in common: dimensions, networks, normalizers, state exchange."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from toolkit.config import PQLConfig
from toolkit.nn import Actor, DoubleQCritic
from toolkit.normalizer import RunningNorm
from toolkit.pql.shared import C, ParamBoard, SharedReplay, SharedState, module_tensors


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


def make_actor(cfg: PQLConfig, dims: Dims) -> Actor:
    return Actor(dims.obs, dims.action, cfg.actor_hidden)


def make_critic(cfg: PQLConfig, dims: Dims) -> DoubleQCritic:
    return DoubleQCritic(dims.critic_obs, dims.action, cfg.critic_hidden, cfg.num_atoms, cfg.v_min, cfg.v_max)


def make_normalizers(cfg: PQLConfig, dims: Dims) -> tuple[RunningNorm, RunningNorm]:
    obs_norm = RunningNorm(dims.obs, clip=cfg.obs_clip)
    critic_norm = RunningNorm(dims.critic_obs, clip=cfg.obs_clip) if dims.asymmetric else obs_norm
    return obs_norm, critic_norm


def make_shared_state(cfg: PQLConfig, dims: Dims, share: bool = True, replay: bool = True) -> SharedState:
    """Counters, weight boards and (``replay``) the replay ring sized for ``cfg`` and ``dims``.

    ``share``: in shared memory for role processes; False for one process's private copy
    (a Ray actor's). ``replay=False`` leaves the ring out where nobody samples it.
    """
    actor, critic = make_actor(cfg, dims), make_critic(cfg, dims)
    obs_norm, critic_norm = make_normalizers(cfg, dims)
    ring = SharedReplay(cfg.replay_size, dims.obs, dims.action, dims.critic_obs if dims.asymmetric else None,
                        share) if replay else None
    return SharedState(ring, *(ParamBoard.for_tensors(module_tensors(m), share)
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


def optimizer_step(optimizer: torch.optim.Optimizer, module: nn.Module, loss: torch.Tensor, clip: float,
                   what: str, update: int) -> float:
    """Backprop ``loss`` with gradient clipping; refuses non-finite losses."""
    value = float(loss.detach())
    if not torch.isfinite(loss.detach()):
        raise NonFiniteLossError(f"{what} loss is {value} at update {update}: stopping (the last good "
                                 "checkpoint is kept). Lower the learning rate or the reward scale.")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(module.parameters(), clip, foreach=True)
    optimizer.step()
    return value


class Learner:
    """What the V- and P-learner share: one gradient step on a replay sample per ``update()``.

    A subclass sets ``name``, ``counter`` (its update counter), ``loss_slot`` (index in
    ``shared.losses``), ``fields`` (replay fields it samples), ``self.trained`` / ``self.optimizer``
    and implements ``_loss(batch)``, ``sync()``, ``publish()``, ``state_dict()`` and
    ``load_state_dict()``; ``after_step()`` runs after each optimizer step.
    """

    name: str
    what: str  # named in a non-finite loss error
    counter: C
    loss_slot: int
    fields: list[str]
    trained: nn.Module
    optimizer: torch.optim.Optimizer

    def __init__(self, cfg: PQLConfig, dims: Dims, shared: SharedState, seed: int, device: str) -> None:
        self.cfg, self.dims, self.shared = cfg, dims, shared
        self.device = torch.device(device)
        self.norms = NormalizerReader(cfg, dims, shared, self.device)
        self.generator = torch.Generator().manual_seed(seed)
        self.updates = int(shared.counters[self.counter])
        self.last_loss = float("nan")

    def _ready(self, state: dict | None) -> None:
        """Finish construction: restore ``state``, pick the (optionally compiled) loss, publish."""
        if state is not None:
            self.load_state_dict(state)
        self._loss_fn = torch.compile(self._loss) if self.cfg.compile else self._loss
        self.publish()

    def after_step(self) -> None:
        pass

    def update(self) -> float:
        """One update on a fresh sample; publishes the weights and bumps the update counter."""
        self.sync()
        replay = self.shared.replay
        idx = replay.sample_indices(self.shared.counters, self.cfg.batch_size, self.generator)
        loss = self._loss_fn(replay.gather(idx, self.fields, self.device))
        self.last_loss = optimizer_step(self.optimizer, self.trained, loss, self.cfg.grad_clip, self.what,
                                        self.updates)
        self.after_step()
        self.publish()
        self.updates += 1
        self.shared.counters[self.counter] = self.updates
        self.shared.losses[self.loss_slot] = self.last_loss
        return self.last_loss
