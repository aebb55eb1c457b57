"""Physics backends behind one interface (see :class:`toolkit.sim.base.BatchedSim`).

``mujoco_batch`` (the MuJoCo C engine, CPU) is the default; ``mujoco_warp`` runs the same
MJCF on a GPU. Backends are imported lazily so that a missing optional one only fails when
it is asked for.
"""

from __future__ import annotations

import importlib

import mujoco

from toolkit.sim.base import BatchedSim

#: backend name -> "module:class"; the one place a backend is named.
BACKENDS = {
    "mujoco_batch": "toolkit.sim.mujoco_batch:MujocoBatchSim",
    "mujoco_warp": "toolkit.sim.mujoco_warp:MujocoWarpSim",
}


def make_sim(backend: str, model: mujoco.MjModel, num_envs: int, device: str = "cpu", nthread: int = 0) -> BatchedSim:
    """Create ``num_envs`` simulations of ``model`` on the named backend."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown sim backend '{backend}'; choose one of {sorted(BACKENDS)}")
    module_name, class_name = BACKENDS[backend].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:  # pragma: no cover - depends on optional packages
        raise ImportError(f"sim backend '{backend}' needs an optional package: {error}. "
                          f"Install it with: pip install -e '.[gpu]'") from error
    return getattr(module, class_name)(model, num_envs, device=device, nthread=nthread)


__all__ = ["BACKENDS", "BatchedSim", "make_sim"]
