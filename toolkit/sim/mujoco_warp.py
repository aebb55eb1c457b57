"""mujoco-warp backend: the same MJCF and task code as ``mujoco_batch``, on a GPU (or, slowly, the CPU).

All ``num_envs`` envs are the ``nworld`` worlds of one ``mujoco_warp.Data``. Its arrays are
wrapped with ``wp.to_torch``, which aliases device memory, so the env reads and writes the
simulator's state directly (no host/device copy per step).

Differences from the C engine that callers see:

* dtype: mujoco-warp computes in float32, so every tensor here is float32 (the C backend's
  are float64).
* Stages: like ``mujoco_batch`` (``stage=mjSTAGE_VEL``), position- and velocity-dependent
  outputs (``site_xpos``, sensors, ...) are current for the state after :meth:`step`. This is
  done by splitting each physics step into ``step2`` (actuation, acceleration, integration)
  then ``step1`` (position and velocity stages of the new state): the same work as
  ``mujoco_warp.step``, with the kinematics left current at the end instead of the start.
* :meth:`forward`, :meth:`reset` and :meth:`model_changed` take env ids like the C backend.
  :meth:`reset` passes them to ``mujoco_warp.reset_data`` as a world mask; :meth:`forward`
  (``step1``) and :meth:`model_changed` (``set_const``) recompute every world, as those
  functions have no world mask. That is harmless (a world whose state and model did not change
  recomputes the same values) and costs one batched call.
* :meth:`diverged` reports worlds that dropped constraint rows (njmax overflow); mujoco-warp
  does not reset unstable worlds itself as the C engine does.
* Per-env model fields: mujoco-warp model arrays whose field spec starts with ``"*"`` are
  indexed ``worldid % array.shape[0]`` by every kernel, so a (1, ...) array is shared by all
  worlds and a (nworld, ...) array holds per-world values. :meth:`model_field` swaps the
  shared array for a (num_envs, ...) copy on first use (what ``Batch.expand`` does in C).

Speed: every batched call (one physics step, forward, reset) is captured once as a graph
(``wp.ScopedCapture``; a CUDA graph on a GPU, a recorded launch list on the CPU) and replayed
with ``wp.capture_launch``: no Python work per kernel, no allocation, no loop over envs.
Replacing a model array (first :meth:`model_field` of a field) drops the graphs, since a graph
holds array addresses; they are captured again on next use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import mujoco
import mujoco_warp as mjw
import numpy as np
import torch
import warp as wp

#: Model fields mujoco_warp's ``set_const`` writes (groups FIXED, KIN0, INERT0). Each kernel there
#: runs over the leading dimension of its *output*, so once an input (body_mass, geom_size, ...)
#: holds per-world values these outputs must hold per-world values too, or every world would get
#: world 0's constants.
_SET_CONST_OUTPUTS = (
    "body_subtreemass", "geom_aabb", "geom_rbound",
    "tendon_length0", "eq_data", "cam_pos0", "cam_poscom0", "cam_mat0", "light_pos0", "light_poscom0", "light_dir0",
    "dof_invweight0", "body_invweight0", "tendon_invweight0", "actuator_acc0",
)

#: Overflows after which a world's physics is wrong: constraint rows it needed were dropped
#: (njmax, its sparse Jacobian, island dofs). Contact pool overflows (nconmax) are shared by all
#: worlds, so they cannot single out a world: mujoco_warp prints them, and :meth:`overflow` has them.
_LOST_ROWS = int(mjw.OverflowType.NEFC | mjw.OverflowType.NJMAX_NNZ | mjw.OverflowType.NVMAX)

_MODEL_SPECS = {f.name: f.type for f in dataclasses.fields(mjw.Model)}
_OPTION_SPECS = {f.name: f.type for f in dataclasses.fields(mjw.Option)}
_DATA_SPECS = {f.name: f.type for f in dataclasses.fields(mjw.Data)}


class MujocoWarpSim:
    """``num_envs`` worlds of ``model`` in one mujoco-warp Data on ``device``.

    Args:
        model: the compiled MuJoCo model (the same one the C backend takes).
        num_envs: number of worlds.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; the torch tensors live there too.
        nthread: ignored (the C backend's thread count), kept for :func:`toolkit.sim.make_sim`.
        graph: capture batched calls as graphs and replay them (default). ``False`` calls the
            mujoco-warp functions directly each time (for debugging; much slower).
        nconmax, njmax: contacts and constraint rows allocated per world. ``None`` takes the
            model's own ``<size nconmax/njmax>`` when it sets them (the Shadow Hand scene does:
            mujoco-warp's guess of 64 rows is too few for it), else mujoco-warp's defaults.
            Worlds that need more set ``overflow`` (see :meth:`overflow`) and drop the excess.

    State tensors (float32, on ``device``, aliasing the simulator): ``qpos`` (num_envs, nq),
    ``qvel`` (num_envs, nv), ``ctrl`` (num_envs, nu), ``mocap_pos`` (num_envs, nmocap, 3),
    ``mocap_quat`` (num_envs, nmocap, 4, w x y z like MuJoCo), ``xfrc_applied`` (num_envs, nbody, 6).
    """

    def __init__(self, model: mujoco.MjModel, num_envs: int, device: str = "cpu", nthread: int = 0, *,
                 graph: bool = True, nconmax: int | None = None, njmax: int | None = None) -> None:
        del nthread  # the C engine's thread count; warp schedules its own
        wp.config.quiet = True  # no line per kernel module loaded: the progress line stays readable
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.model = model
        self.num_envs = num_envs
        self._wp_device = _warp_device(device)
        self._name = _model_name(model)
        with wp.ScopedDevice(self._wp_device):
            try:
                self._m = mjw.put_model(model)
            except (NotImplementedError, ValueError) as error:
                raise ValueError(f"mujoco_warp cannot simulate model '{self._name}': {error}. "
                                 "Use the mujoco_batch backend (C engine) for this model.") from error
            if nconmax is None and model.nconmax > 0:
                nconmax = int(model.nconmax)
            if njmax is None and model.njmax > 0:
                njmax = int(model.njmax)
            self._d = mjw.make_data(model, nworld=num_envs, nconmax=nconmax, njmax=njmax)
            # Reset mask of reset(ids): one persistent array, read by the captured reset graph.
            self._reset_mask = wp.zeros(num_envs, dtype=bool)
        self._reset_mask_t = wp.to_torch(self._reset_mask)
        self.device = self._reset_mask_t.device
        self._use_graph = graph
        self._graphs: dict[str, wp.Graph] = {}
        self._streams: dict[int, wp.Stream] = {}
        # MuJoCo's own shapes, so that data_field/model_field match the C backend's (e.g.
        # site_xmat (num_envs, nsite, 9) rather than warp's (num_envs, nsite, 3, 3)).
        self._mj_data = mujoco.MjData(model)
        self._data_fields: dict[str, torch.Tensor] = {}
        self._model_fields: dict[str, torch.Tensor] = {}
        self.qpos = self.data_field("qpos")
        self.qvel = self.data_field("qvel")
        self.ctrl = self.data_field("ctrl")
        self.mocap_pos = self.data_field("mocap_pos")
        self.mocap_quat = self.data_field("mocap_quat")
        self.xfrc_applied = self.data_field("xfrc_applied")
        self._overflow = self.data_field("overflow")
        self._lost_rows = torch.zeros_like(self._overflow)
        self._diverged = torch.zeros(num_envs, dtype=torch.bool, device=self.device)
        # make_data leaves every world at the model defaults without derived quantities;
        # step1 has not run yet.
        self._stale = True

    # --- the BatchedSim protocol -------------------------------------------------------
    def step(self, nstep: int) -> None:
        """Advance every world by ``nstep`` physics steps; position/velocity stages are current after."""
        with self._on_device():
            if self._stale:
                self._run("forward", self._forward_all)
            for _ in range(nstep):
                self._run("substep", self._substep_all)
        # Report lost constraint rows once, then clear those flags (the C backend likewise zeroes
        # its warning counters); out= keeps this allocation-free.
        torch.bitwise_and(self._overflow, _LOST_ROWS, out=self._lost_rows)
        torch.ne(self._lost_rows, 0, out=self._diverged)
        self._overflow.bitwise_and_(~_LOST_ROWS)

    def diverged(self) -> torch.Tensor:
        """bool (num_envs,): worlds that dropped constraint rows (njmax overflow) in the last
        :meth:`step`. mujoco_warp does not reset unstable worlds itself: a NaN state stays in
        place, for the VecEnv's finiteness check to catch."""
        return self._diverged

    def reset(self, ids: torch.Tensor) -> None:
        """Reset worlds ``ids`` ((k,) int64) to the model defaults: qpos0 (per world if
        ``model_field("qpos0")`` was taken), zero qvel/ctrl/xfrc_applied, mocap from the model."""
        # The mask is written by torch before the warp work is ordered after torch's stream.
        self._reset_mask_t.zero_()
        self._reset_mask_t[ids.to(self.device)] = True
        with self._on_device():
            self._run("reset", self._reset_masked)
        # The derived quantities of the reset worlds are those of the old state until forward.
        self._stale = True

    def forward(self, ids: torch.Tensor) -> None:
        """Recompute position/velocity stages after state writes (every world; see module doc)."""
        del ids
        with self._on_device():
            self._run("forward", self._forward_all)
        self._stale = False

    def data_field(self, name: str) -> torch.Tensor:
        """A live (num_envs, ...) float32/int32 tensor of a per-world Data field (``site_xpos``
        (num_envs, nsite, 3), ``sensordata`` (num_envs, nsensordata), ...), shaped like MuJoCo's."""
        if name not in self._data_fields:
            spec = _DATA_SPECS.get(name)
            if spec is None:
                raise ValueError(f"mujoco_warp.Data has no field '{name}'")
            if getattr(spec, "shape", ())[:1] != ("nworld",):
                raise ValueError(f"'{name}' is not a per-world array of mujoco_warp.Data "
                                 "(contacts and constraint rows are pooled across worlds in mujoco_warp)")
            self._data_fields[name] = self._mujoco_shaped(getattr(self._d, name),
                                                          getattr(self._mj_data, name, None), name)
        return self._data_fields[name]

    def model_field(self, name: str) -> torch.Tensor:
        """A live, writable (num_envs, ...) tensor of per-world values of a model field
        (``"dof_damping"`` (num_envs, nv), ``"opt.gravity"`` (num_envs, 3), ...), shaped like
        ``mujoco.batch.Batch.expand``. Call :meth:`model_changed` after mass/inertia/size writes."""
        if name not in self._model_fields:
            owner, attr, specs = (self._m.opt, name[4:], _OPTION_SPECS) if name.startswith("opt.") else \
                (self._m, name, _MODEL_SPECS)
            spec = specs.get(attr)
            if spec is None:
                raise ValueError(f"mujoco_warp.Model has no field '{name}' (options are named 'opt.<field>')")
            if getattr(spec, "shape", ())[:1] != ("*",):
                raise ValueError(f"'{name}' cannot hold per-world values in mujoco_warp (only model fields "
                                 "whose array spec starts with '*' can; sizes and topology are shared)")
            mj_owner = self.model.opt if name.startswith("opt.") else self.model
            self._model_fields[name] = self._mujoco_shaped(self._per_world(owner, attr),
                                                           getattr(mj_owner, attr, None), name)
        return self._model_fields[name]

    def model_changed(self, ids: torch.Tensor) -> None:
        """Recompute what MuJoCo derives from masses, inertias and sizes (mujoco_warp.set_const:
        subtree masses, geom bounds, invweight0, actuator_acc0, qpos0 kinematics) for every world;
        ``ids`` is accepted for the protocol. Not recomputed (mujoco_warp skips them):
        actuator_length0, dof_length, flex lengths, tendon_lengthspring."""
        del ids
        if self._model_fields:  # some inputs may now differ per world
            for attr in _SET_CONST_OUTPUTS:
                self._per_world(self._m, attr)
        with self._on_device():
            # Not captured: set_const allocates scratch arrays each call. It is called at
            # resets (domain randomization), not per physics step.
            mjw.set_const(self._m, self._d)
        # set_const restores kinematics only; collisions and constraints are recomputed by forward.
        self._stale = True

    # --- extras ------------------------------------------------------------------------
    def overflow(self) -> torch.Tensor:
        """Live (num_envs,) int32 mujoco_warp.OverflowType flags of each world since its last reset:
        contact pool (nconmax, shared by all worlds), solver iteration limits, ... The lost-row
        flags (njmax) are moved into :meth:`diverged` by each :meth:`step`."""
        return self.data_field("overflow")

    @property
    def warp_model(self) -> mjw.Model:
        return self._m

    @property
    def warp_data(self) -> mjw.Data:
        return self._d

    # --- internals ---------------------------------------------------------------------
    def _substep_all(self) -> None:
        mjw.step2(self._m, self._d)
        mjw.step1(self._m, self._d)

    def _forward_all(self) -> None:
        mjw.step1(self._m, self._d)

    def _reset_masked(self) -> None:
        mjw.reset_data(self._m, self._d, reset=self._reset_mask)

    def _run(self, name: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` through its captured graph (captured on first use), or directly."""
        if not self._use_graph:
            fn()
            return
        graph = self._graphs.get(name)
        if graph is None:
            # Capture records the launches without running them (kernels compile here once).
            with wp.ScopedCapture(device=self._wp_device) as capture:
                fn()
            graph = self._graphs[name] = capture.graph
        wp.capture_launch(graph)

    def _on_device(self):
        """Scope warp work on the sim's device; on CUDA, ordered after the torch work queued on the
        current torch stream and before any torch work queued later (events are reused: no allocation)."""
        if not self._wp_device.startswith("cuda"):
            return wp.ScopedDevice(self._wp_device)
        return _TorchStreamOrder(self)

    def _per_world(self, owner, attr: str) -> wp.array:
        """``owner.attr`` as a (num_envs, ...) array, replacing a shared (1, ...) one by copies."""
        array = getattr(owner, attr)
        if array.shape[0] != self.num_envs:
            with wp.ScopedDevice(self._wp_device):
                tiled = np.repeat(array.numpy(), self.num_envs, axis=0)
                array = wp.array(tiled, dtype=array.dtype, shape=(self.num_envs, *array.shape[1:]))
            array._is_batched = True  # what mujoco_warp's put_model marks on batched arrays
            setattr(owner, attr, array)
            self._graphs.clear()  # captured graphs hold the old array's address
        return array

    def _mujoco_shaped(self, array: wp.array, reference, name: str) -> torch.Tensor:
        """``wp.to_torch(array)`` viewed as (num_envs, *MuJoCo's shape of the field)."""
        tensor = wp.to_torch(array)
        if reference is None:  # a warp-only field: keep warp's layout
            return tensor
        shape = (self.num_envs, *np.shape(reference))
        if tensor.numel() != int(np.prod(shape)):
            raise ValueError(f"mujoco_warp stores '{name}' as {tuple(tensor.shape)}, not like MuJoCo's "
                             f"{tuple(shape)}; it cannot be exposed with MuJoCo's layout")
        return tensor.view(shape)


class _TorchStreamOrder:
    """Context for CUDA: run warp on its stream between the torch work before and after."""

    def __init__(self, sim: MujocoWarpSim) -> None:
        self._sim = sim
        self._device_scope = wp.ScopedDevice(sim._wp_device)

    def __enter__(self) -> None:
        self._device_scope.__enter__()
        sim = self._sim
        torch_stream = torch.cuda.current_stream(sim.device)
        wrapped = sim._streams.get(torch_stream.cuda_stream)
        if wrapped is None:
            wrapped = sim._streams[torch_stream.cuda_stream] = wp.stream_from_torch(torch_stream)
        self._torch_stream = wrapped
        self._warp_stream = wp.get_stream(sim._wp_device)
        if wrapped.cuda_stream != self._warp_stream.cuda_stream:
            self._warp_stream.wait_stream(wrapped)

    def __exit__(self, *exc) -> None:
        if self._torch_stream.cuda_stream != self._warp_stream.cuda_stream:
            self._torch_stream.wait_stream(self._warp_stream)
        self._device_scope.__exit__(*exc)


def _warp_device(device: str) -> str:
    """The warp device name of a torch-style device string ('cpu', 'cuda', 'cuda:1')."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return "cpu"
    if dev.type != "cuda":
        raise ValueError(f"the mujoco_warp backend runs on 'cpu' or 'cuda[:N]'; got device='{device}'")
    if not wp.is_cuda_available():
        raise ValueError(f"device='{device}' asks for CUDA, but warp finds no CUDA device on this machine "
                         "(mujoco_warp also runs on device='cpu', slowly)")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return f"cuda:{index}"


def _model_name(model: mujoco.MjModel) -> str:
    # The model's name is the first entry of its names buffer (<mujoco model="...">).
    return bytes(model.names).split(b"\0", 1)[0].decode() or "unnamed"
