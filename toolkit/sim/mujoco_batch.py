"""MuJoCo C engine backend: ``mujoco.batch.Batch`` steps all envs in one call.

The batch's bound arrays are numpy views of its state rows; ``torch.from_numpy`` wraps
them without copying, so the env reads and writes the simulator's memory directly.
"""

from __future__ import annotations

import warnings

import mujoco
import numpy as np
import torch
from mujoco.batch import Batch, SimulationError

#: Warnings after which MuJoCo resets a simulation to the model defaults (mj_checkPos/Vel/Acc).
_UNSTABLE_WARNINGS = np.array([int(mujoco.mjtWarning.mjWARN_BADQPOS), int(mujoco.mjtWarning.mjWARN_BADQVEL),
                               int(mujoco.mjtWarning.mjWARN_BADQACC)])


class MujocoBatchSim:
    """``num_envs`` persistent simulations on ``nthread`` threads (0: all CPUs)."""

    def __init__(self, model: mujoco.MjModel, num_envs: int, device: str = "cpu", nthread: int = 0) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}: simulate at least one env")
        if torch.device(device).type != "cpu":
            raise ValueError(f"the mujoco_batch backend runs on the CPU; got device='{device}'. "
                             "Use --sim mujoco_warp for a GPU.")
        self.model = model
        self.num_envs = num_envs
        self.device = torch.device("cpu")
        self._batch = Batch(model, num_envs, nthread=nthread, persistent=True)
        self._batch.reset()
        self._data_fields: dict[str, torch.Tensor] = {}
        self._model_fields: dict[str, torch.Tensor] = {}
        self.qpos = self._bind_state("qpos")
        self.qvel = self._bind_state("qvel")
        self.ctrl = self._bind_state("ctrl")
        self.mocap_pos = self._bind_state("mocap_pos")
        self.mocap_quat = self._bind_state("mocap_quat")
        self.xfrc_applied = self._bind_state("xfrc_applied")
        # (num_envs, mjNWARNING) live view of the warning counters; Batch.reset zeroes a row.
        self._warning_count = self._batch.warning[:, :, 1]
        self._diverged = torch.zeros(num_envs, dtype=torch.bool)

    @property
    def nthread(self) -> int:
        return self._batch.nthread

    def _bind_state(self, name: str) -> torch.Tensor:
        array = self._batch.bind(name)
        if array.size == 0:  # e.g. no mocap bodies: keep a consistent (num_envs, 0, k) shape
            return torch.zeros(array.shape, dtype=torch.float64)
        return torch.from_numpy(array)

    def step(self, nstep: int) -> None:
        # mjSTAGE_VEL makes kinematics current for the new state; a persistent batch carries
        # those stages into its next step, so this costs almost nothing.
        try:
            self._batch.step(nstep=nstep, stage=mujoco.mjtStage.mjSTAGE_VEL)
            failed = None
        except SimulationError as error:
            # MuJoCo errors (e.g. contact arena overflow) in some envs: they kept their state from
            # before the call while the others ran. Report them as diverged so the env resets them
            # instead of one bad env stopping the whole batch.
            failed = error.ids
        counts = self._warning_count[:, _UNSTABLE_WARNINGS]  # (num_envs, 3), a small copy
        diverged = counts.any(axis=1)
        if failed is not None:
            diverged[failed] = True
        if diverged.any():
            # Zero the counters so that the next step reports only new instabilities.
            self._warning_count[np.ix_(diverged, _UNSTABLE_WARNINGS)] = 0
        self._diverged = torch.from_numpy(diverged)

    def diverged(self) -> torch.Tensor:
        return self._diverged

    def reset(self, ids: torch.Tensor) -> None:
        self._batch.reset(ids=_np_ids(ids), stage=mujoco.mjtStage.mjSTAGE_NONE)

    def forward(self, ids: torch.Tensor) -> None:
        self._batch.forward(ids=_np_ids(ids), stage=mujoco.mjtStage.mjSTAGE_VEL)

    @property
    def batch(self) -> Batch:
        """The underlying ``mujoco.batch.Batch`` (benchmarks, debugging)."""
        return self._batch

    def data_field(self, name: str) -> torch.Tensor:
        if name not in self._data_fields:
            with warnings.catch_warnings():  # outputs are read-only arrays the batch refreshes per call
                warnings.simplefilter("ignore", UserWarning)
                self._data_fields[name] = torch.from_numpy(self._batch.bind(name))
        return self._data_fields[name]

    def model_field(self, name: str) -> torch.Tensor:
        if name not in self._model_fields:
            self._model_fields[name] = torch.from_numpy(self._batch.expand(name))
        return self._model_fields[name]

    def model_changed(self, ids: torch.Tensor) -> None:
        self._batch.set_const(ids=_np_ids(ids))

    def get_data(self, env: int) -> mujoco.MjData:
        """Env ``env``'s MjData (for rendering and debugging; not for the hot path)."""
        return self._batch.get_data(env)

    def get_model(self, env: int) -> mujoco.MjModel:
        return self._batch.get_model(env)


def _np_ids(ids: torch.Tensor) -> np.ndarray:
    return ids.detach().cpu().numpy().astype(np.int64, copy=False)
