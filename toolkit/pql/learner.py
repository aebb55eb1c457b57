"""What the V- and P-learner share: one gradient step on a replay sample per :meth:`Learner.work`.

The update path stays on the learner's device: indices are drawn there, the batch gathered
there, the loss never copied to the host per update. Every ``loss_readback`` updates (and before
handing over a state for a checkpoint) the last loss is read back once, checked to be finite and
written to the shared losses the trainer logs. Opt-in speed-ups: ``--pql.compile``
(``torch.compile`` of the loss; mode reduce-overhead, i.e. CUDA graphs, on a GPU) and
``--pql.bf16`` (bf16 autocast of the forward and backward passes; weights, optimizer state and
the loss stay float32).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from toolkit.config import PQLConfig
from toolkit.pql.roles import ROLES, Dims, NonFiniteLossError, NormalizerReader, Role, compute_devices
from toolkit.pql.shared import Counter, SharedState


def loss_readback_interval(cfg: PQLConfig, device: torch.device) -> int:
    """Updates between host readbacks of the loss: ``cfg.loss_readback_updates``, or (0) every
    update on a CPU (free there) and every 100 on an accelerator (no host sync per update)."""
    if cfg.loss_readback_updates < 0:
        raise ValueError(f"loss_readback_updates must be >= 0, got {cfg.loss_readback_updates}")
    return cfg.loss_readback_updates or (1 if device.type == "cpu" else 100)


def optimizer_step(optimizer: torch.optim.Optimizer, module: nn.Module, loss: torch.Tensor, clip: float) -> None:
    """Backprop ``loss`` with gradient-norm clipping and step (no host synchronisation)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(module.parameters(), clip, foreach=True)
    optimizer.step()


class Learner:
    """One gradient step on a fresh replay sample per :meth:`work`; publishes the trained
    weights and bumps the role's update counter.

    A subclass sets ``role``, ``counter`` (its update counter), ``what`` (named in a non-finite
    loss error), ``fields`` (replay fields it samples), ``self.trained`` / ``self.optimizer`` and
    implements ``_loss(batch)``, ``sync()``, ``publish()``, ``state_dict()`` and
    ``load_state_dict()``; ``after_step()`` runs after each optimizer step.
    """

    role: Role
    counter: Counter
    what: str
    fields: list[str]
    trained: nn.Module
    optimizer: torch.optim.Optimizer

    def __init__(self, cfg: PQLConfig, dims: Dims, shared: SharedState, seed: int, device: str) -> None:
        self.cfg, self.dims, self.shared = cfg, dims, shared
        self.device = torch.device(device)
        self.norms = NormalizerReader(cfg, dims, shared, self.device)
        replay_device = shared.replay.device if shared.replay is not None else self.device
        self.generator = torch.Generator(device=replay_device).manual_seed(seed)
        self.updates = int(shared.counters[self.counter])
        self.loss_slot = ROLES[self.role].loss_slot
        self.readback = loss_readback_interval(cfg, self.device)
        self.last_loss = float("nan")
        self._loss_value: torch.Tensor | None = None  # on the device; read back every `readback` updates
        self._autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.bf16 \
            else contextlib.nullcontext()

    def _ready(self, state: dict | None) -> None:
        """Finish construction: restore ``state``, pick the (optionally compiled) loss, publish."""
        if state is not None:
            self.load_state_dict(state)
        if self.cfg.compile:
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"
            self._loss_fn = torch.compile(self._loss, mode=mode)
        else:
            self._loss_fn = self._loss
        self.publish()

    def after_step(self) -> None:
        pass

    def sample(self) -> dict[str, torch.Tensor]:
        """A fresh batch of the learner's replay fields, on its device."""
        replay = self.shared.replay
        idx = replay.sample_indices(self.shared.counters, self.cfg.batch_size, self.generator)
        return replay.gather(idx, self.fields, self.device)

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss and optimizer step on ``batch`` (the bare compute the benchmarks compare against)."""
        with self._autocast:
            loss = self._loss_fn(batch).float()
        optimizer_step(self.optimizer, self.trained, loss, self.cfg.grad_clip)
        self.after_step()
        return loss.detach()

    def work(self) -> None:
        """One update on a fresh sample; publishes the weights and bumps the update counter."""
        self.sync()
        self._loss_value = self.step(self.sample())
        self.updates += 1
        if self.updates % self.readback == 0:
            self.read_back()  # before publishing: weights from a checked non-finite loss never leave the role
        self.publish()
        self.shared.counters[self.counter] = self.updates

    def read_back(self) -> float:
        """Copy the last loss to the host (one sync), refuse a non-finite one, share it."""
        if self._loss_value is None:
            return self.last_loss
        self.last_loss = float(self._loss_value)
        if not torch.isfinite(torch.tensor(self.last_loss)):
            raise NonFiniteLossError(f"{self.what} loss is {self.last_loss} at update {self.updates}: stopping (the "
                                     "last good checkpoint is kept). Lower the learning rate or the reward scale.")
        self.shared.losses[self.loss_slot] = self.last_loss
        return self.last_loss

    def devices(self) -> dict[str, str]:
        """Where this role computes (its trained network's and the replay ring's device)."""
        return compute_devices(self.trained, self.shared.replay)

    def checked_state_dict(self) -> dict:
        """The state for a checkpoint, after making sure no non-finite update slipped in since the
        last readback (a checkpoint never holds diverged weights)."""
        self.read_back()
        if not all(bool(torch.isfinite(p).all()) for p in self.trained.parameters()):
            raise NonFiniteLossError(f"the {self.what} weights are not finite at update {self.updates}: stopping "
                                     "(the last good checkpoint is kept)")
        return self.state_dict()
