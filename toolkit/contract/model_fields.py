"""Per-env model parameters behind one small interface, for every simulator the toolkit drives.

Domain randomization and calibration both change model parameters (damping, gains, friction,
masses, ...) of some envs. They are written once, against :class:`ModelFields`, and work on

* the training sims (:class:`toolkit.sim.base.BatchedSim`: ``mujoco.batch.Batch.expand`` on the
  C engine, warp's batched model arrays), whose fields are torch tensors;
* a population of candidate models in one ``mujoco.batch.Batch`` (:class:`BatchFields`, numpy);
* one ``mujoco.MjModel`` seen as a batch of one env (:class:`SingleModelFields`, numpy): the
  deployment sim and the nominal model a calibration edits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import mujoco
    from mujoco.batch import Batch

Array = Any


class ModelFields(Protocol):
    """Writable per-env views of MjModel fields.

    ``model_field(name)`` returns a live (num_envs, ...) array of the per-env values of an
    MjModel field (``"opt.gravity"`` for an option); writing a row changes only that env.
    ``model_changed(ids)`` recomputes what MuJoCo derives from masses and inertias
    (``mj_setConst``) for envs ``ids`` after such fields were written.
    """

    num_envs: int

    def model_field(self, name: str) -> Array: ...

    def model_changed(self, ids: Array) -> None: ...


class SingleModelFields:
    """One ``MjModel`` as a batch of one env: ``model_field("dof_damping")`` is
    ``model.dof_damping[None]``, a writable view (numpy)."""

    num_envs = 1

    def __init__(self, model: mujoco.MjModel) -> None:
        self.model = model
        self._data = None  # scratch MjData for mj_setConst, made on first use

    def model_field(self, name: str) -> np.ndarray:
        if name.startswith("opt."):
            return getattr(self.model.opt, name[4:])[None]
        return getattr(self.model, name)[None]

    def model_changed(self, ids) -> None:
        import mujoco

        if self._data is None:
            self._data = mujoco.MjData(self.model)
        mujoco.mj_setConst(self.model, self._data)


class BatchFields:
    """The per-env models of a ``mujoco.batch.Batch`` (numpy views from ``Batch.expand``)."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.num_envs = batch.nsim
        self._fields: dict[str, np.ndarray] = {}

    def model_field(self, name: str) -> np.ndarray:
        if name not in self._fields:
            self._fields[name] = self.batch.expand(name)
        return self._fields[name]

    def model_changed(self, ids) -> None:
        self.batch.set_const(ids=np.asarray(ids, dtype=np.int64))
