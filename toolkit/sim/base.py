"""The batched-simulator interface every physics backend implements."""

from __future__ import annotations

from typing import Protocol

import mujoco
import torch


class BatchedSim(Protocol):
    """``num_envs`` copies of one MuJoCo model stepped together.

    State arrays are torch tensors that *alias* the simulator's memory (no copy per step);
    writing into them changes the simulation. Shapes: ``qpos`` (num_envs, nq), ``qvel``
    (num_envs, nv), ``ctrl`` (num_envs, nu), ``mocap_pos`` (num_envs, nmocap, 3),
    ``mocap_quat`` (num_envs, nmocap, 4), ``xfrc_applied`` (num_envs, nbody, 6).
    """

    model: mujoco.MjModel
    num_envs: int
    device: torch.device
    qpos: torch.Tensor
    qvel: torch.Tensor
    ctrl: torch.Tensor
    mocap_pos: torch.Tensor
    mocap_quat: torch.Tensor
    xfrc_applied: torch.Tensor

    def step(self, nstep: int) -> None:
        """Advance every env by ``nstep`` physics steps; kinematics (site_xpos, ...) are
        current for the new state afterwards."""

    def diverged(self) -> torch.Tensor:
        """bool (num_envs,): envs whose physics went unstable in the last :meth:`step`.

        The MuJoCo C engine checks qpos/qvel/qacc for NaN, inf and huge values and silently
        resets such a simulation to the model defaults (a warning, not an error), so its state
        is finite again afterwards; a finite-state check alone misses those envs. Backends that
        leave a non-finite state in place may return all False: the VecEnv also checks that
        qpos and qvel are finite."""

    def reset(self, ids: torch.Tensor) -> None:
        """Reset envs ``ids`` (int64, (k,)) to the model defaults (qpos0, zero velocity)."""

    def forward(self, ids: torch.Tensor) -> None:
        """Recompute derived quantities of envs ``ids`` after their state was written."""

    def data_field(self, name: str) -> torch.Tensor:
        """A live (num_envs, ...) tensor of an MjData output field such as ``site_xpos``."""

    def model_field(self, name: str) -> torch.Tensor:
        """A live, writable (num_envs, ...) tensor of per-env values of an MjModel field
        (``"opt.gravity"`` for options); writing it changes only the given envs."""

    def model_changed(self, ids: torch.Tensor) -> None:
        """Recompute the constants MuJoCo derives from mass/inertia fields for envs ``ids``."""
