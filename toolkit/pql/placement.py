"""Where the three PQL roles run: one :class:`Placement` interface, three implementations.

* :class:`ProcessPlacement` (default): three processes (torch.multiprocessing, forkserver) sharing
  counters, weight boards and the replay ring (CPU shared memory, or CUDA tensors through CUDA
  IPC); the trainer's process logs, evaluates and checkpoints.
* :class:`SequentialPlacement`: the roles interleaved in the trainer's process, gated by the same
  counters (tests, debugging, and one GPU without inter-process traffic, FastTD3's way).
* :class:`toolkit.pql.ray_placement.RayPlacement`: Ray actors, on one machine or a cluster.

Every placement runs the same role classes (:func:`build_role`) under the same
:class:`RoleLoop` and :class:`~toolkit.pql.ratio.RatioGate`; the trainer drives any of them
through ``start()``, ``tick()``, ``gather_states(final)`` and ``shutdown()``.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import signal
import sys
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.multiprocessing as mp

from toolkit.config import TrainConfig
from toolkit.contract.task import Task
from toolkit.pql.ratio import RatioGate
from toolkit.pql.roles import ROLES, Dims, Role, TrainingError, to_cpu
from toolkit.pql.shared import Counter, SharedState, read_counters

#: Seconds a role may take to answer a pause (checkpoint) request or to start.
ROLE_TIMEOUT_S = 120.0


@dataclass
class Snapshot:
    """Every role's state, and the counters they had when they handed it over."""

    states: dict[Role, dict]
    counters: dict[str, int]


@dataclass
class RunContext:
    """What every placement needs to start the roles of one run.

    Attributes:
        cfg: the run's config.
        dims: the task's sizes.
        shared: counters, boards and the replay ring (the trainer's; placements that cannot share
            memory mirror it).
        gate: the speed-ratio gates.
        v_start, p_start: learner update counts when this invocation started (resume).
        make_task: builds the run's task (picklable: it crosses into role processes).
        run_dir: the run directory (roles.json).
    """

    cfg: TrainConfig
    dims: Dims
    shared: SharedState
    gate: RatioGate
    v_start: int
    p_start: int
    make_task: Callable[[], Task]
    run_dir: Path


def build_role(role: Role, cfg: TrainConfig, dims: Dims, shared: SharedState, state: dict | None,
               make_task: Callable[[], Task]):
    """Construct one role (in whatever process or Ray actor runs it)."""
    torch.set_num_threads(cfg.pql.torch_threads)
    seed = cfg.env.seed * 1000 + ROLES[role].seed_offset
    if role is Role.ACTOR:
        from toolkit.envs.vec_env import VecEnv
        from toolkit.pql.actor import ActorRole

        return ActorRole(cfg.pql, dims, shared, VecEnv(make_task(), cfg.env), seed, state)
    if role is Role.V_LEARNER:
        from toolkit.pql.v_learner import VLearner

        return VLearner(cfg.pql, dims, shared, seed, state, device=cfg.learner_device())
    from toolkit.pql.p_learner import PLearner

    return PLearner(cfg.pql, dims, shared, seed, state, device=cfg.learner_device())


class _Nap:
    """RoleLoop's wait in shared memory: the other roles' counters are live, so just sleep.

    The sleep doubles from 0.1 ms up to 2 ms while the gate stays shut: a role waiting for a
    much slower one (the P-learner for the V-learner) then costs ~500 wake-ups/s, not ~5000,
    which measurably freed CPU for the working roles on a 2-core machine; an update takes
    10-50 ms on a CPU, so waking 2 ms late costs little.
    """

    def __init__(self) -> None:
        self._sleep = 1e-4

    def __call__(self, worked: bool) -> None:
        if worked:
            self._sleep = 1e-4
            return
        time.sleep(self._sleep)
        self._sleep = min(self._sleep * 2, 2e-3)


class RoleLoop:
    """Runs one role under the ratio gates, serving pause (checkpoint) requests.

    ``poll(worked)`` runs after every attempt at work and while paused; it is where a
    placement whose counters are not shared memory (Ray) exchanges them with the others.
    """

    def __init__(self, role: Role, worker, shared: SharedState, gate: RatioGate, v_start: int, p_start: int,
                 poll: Callable[[bool], None] | None = None) -> None:
        self.role, self.worker, self.shared, self.gate = role, worker, shared, gate
        self.spec = ROLES[role]
        self.v_start, self.p_start, self.poll = v_start, p_start, poll or _Nap()
        self._served_pause = 0
        self._may = gate.may_work(role)

    def try_work(self) -> bool:
        """Do one unit of work if the gate allows it; returns whether it did."""
        if self._may(self.shared.counters, self.v_start, self.p_start):
            self.worker.work()
            return True
        return False

    def pause_requested(self) -> int:
        request = int(self.shared.counters[Counter.PAUSE])
        return request if request % 2 == 1 and request > self._served_pause else 0

    def serve_pause(self, request: int, state_queue) -> None:
        state_queue.put((self.role, to_cpu(self.worker.checked_state_dict())))
        self._served_pause = request
        self.shared.counters[self.spec.paused] = request
        while int(self.shared.counters[Counter.PAUSE]) == request and not int(self.shared.counters[Counter.STOP]):
            self.poll(False)

    def run(self, state_queue) -> None:
        counters = self.shared.counters
        while not int(counters[Counter.STOP]):
            request = self.pause_requested()
            if request:
                self.serve_pause(request, state_queue)
                continue
            self.poll(self.try_work())


class Placement(ABC):
    """Runs the roles of one training run; the trainer's main loop drives it.

    ``start()`` builds and starts every role; ``tick()`` advances them (sequential) or checks
    their health (processes, Ray), raising :class:`TrainingError` naming a role that failed;
    ``gather_states(final)`` returns a consistent :class:`Snapshot` of every role's state and the
    matching counters (``final``: the roles stay stopped afterwards);
    ``shutdown()`` stops everything, also after a failure.
    """

    def __init__(self, ctx: RunContext, role_states: dict[Role, dict | None]) -> None:
        self.ctx, self.role_states = ctx, role_states

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def tick(self) -> None: ...

    @abstractmethod
    def check_health(self) -> None:
        """Raise :class:`TrainingError` naming a role that failed."""

    def raise_role_failure(self, wait_s: float = 5.0) -> None:
        """After an error in the trainer's own work (an evaluation of diverged weights), give a
        failing role ``wait_s`` to report: its error is the cause and names the role."""
        deadline = time.perf_counter() + wait_s
        while time.perf_counter() < deadline:
            self.check_health()
            time.sleep(0.05)

    @abstractmethod
    def gather_states(self, final: bool) -> Snapshot: ...

    @abstractmethod
    def shutdown(self) -> None: ...

    def write_roles(self, where: dict[Role, dict]) -> None:
        """roles.json: where each role runs, by role name: its process id ``pid`` and, once the role
        has reported them from its own tensors, ``device`` and ``replay`` (:func:`compute_devices`)."""
        path = self.ctx.run_dir / "roles.json"
        temporary = path.with_name(".roles.json.tmp")  # rewritten as roles report: readers never see half a file
        temporary.write_text(json.dumps({ROLES[r].name: w for r, w in where.items()}, indent=1))
        os.replace(temporary, path)


class SequentialPlacement(Placement):
    """The three roles interleaved in this process; each works while its gate allows."""

    def start(self) -> None:
        ctx = self.ctx
        self.loops = [RoleLoop(role, build_role(role, ctx.cfg, ctx.dims, ctx.shared, self.role_states[role],
                                                ctx.make_task), ctx.shared, ctx.gate, ctx.v_start, ctx.p_start)
                      for role in Role]
        self.write_roles({loop.role: {"pid": os.getpid(), **loop.worker.devices()} for loop in self.loops})

    def tick(self) -> None:
        for loop in self.loops:  # one round: each role works while its gate allows (the gates keep the ratios)
            while loop.try_work():
                pass

    def gather_states(self, final: bool) -> Snapshot:
        states = {loop.role: to_cpu(loop.worker.checked_state_dict()) for loop in self.loops}
        return Snapshot(states, read_counters(self.ctx.shared.counters))

    def shutdown(self) -> None:
        self.ctx.shared.counters[Counter.STOP] = 1

    def check_health(self) -> None:
        pass  # the roles run in this process: their errors raise from tick()

    def raise_role_failure(self, wait_s: float = 0.0) -> None:
        pass


class ProcessPlacement(Placement):
    """Each role in its own process, on the shared state the trainer created."""

    def start(self) -> None:
        mp_ctx = role_process_context(self.ctx.make_task)
        self.state_queue, self.error_queue, self.device_queue = mp_ctx.Queue(), mp_ctx.Queue(), mp_ctx.Queue()
        ctx = self.ctx
        self.processes = {
            role: mp_ctx.Process(target=_role_process, name=ROLES[role].name, daemon=True,
                                 args=(role, ctx.cfg, ctx.dims, ctx.shared, self.role_states[role], ctx.v_start,
                                       ctx.p_start, ctx.make_task, self.state_queue, self.error_queue,
                                       self.device_queue))
            for role in Role}
        for process in self.processes.values():
            process.start()
        self.where = {role: {"pid": p.pid} for role, p in self.processes.items()}
        self.write_roles(self.where)

    def _record_devices(self) -> None:
        """Add to roles.json the devices the roles report once built (from inside their processes)."""
        reported = False
        while True:
            try:
                role, devices = self.device_queue.get_nowait()
            except queue.Empty:
                break
            self.where[role].update(devices)
            reported = True
        if reported:
            self.write_roles(self.where)

    def check_health(self) -> None:
        self._record_devices()
        try:
            role, message, trace = self.error_queue.get_nowait()
        except queue.Empty:
            pass
        else:
            raise TrainingError(f"{ROLES[role].name} failed: {message}\n{trace}")
        for role, process in self.processes.items():
            if process.exitcode is not None:
                how = f"signal {-process.exitcode}" if process.exitcode < 0 else f"exit code {process.exitcode}"
                raise TrainingError(f"{ROLES[role].name} process died ({how}); stopping all roles")

    def tick(self) -> None:
        self.check_health()
        time.sleep(0.02)

    def gather_states(self, final: bool) -> Snapshot:
        counters = self.ctx.shared.counters
        request = int(counters[Counter.PAUSE]) + 1  # odd: paused
        counters[Counter.PAUSE] = request
        states: dict[Role, dict] = {}
        deadline = time.perf_counter() + ROLE_TIMEOUT_S
        try:
            while len(states) < len(Role):
                self.check_health()
                if time.perf_counter() > deadline:
                    missing = sorted(ROLES[r].name for r in set(Role) - set(states))
                    raise TrainingError(f"roles {missing} did not answer a checkpoint request within "
                                        f"{ROLE_TIMEOUT_S:.0f}s")
                try:
                    role, state = self.state_queue.get(timeout=0.1)
                except queue.Empty:
                    continue
                except (EOFError, OSError) as error:
                    # A state's tensors arrive as file descriptors fetched from the sending role: a role
                    # killed meanwhile breaks the transfer. Name the role that died.
                    self.raise_role_failure()
                    raise TrainingError(f"a role's state for the checkpoint could not be received: "
                                        f"{type(error).__name__}: {error}") from error
                states[role] = state
            snapshot = Snapshot(states, read_counters(counters))  # every role is paused: these match the states
        finally:
            if final:  # stop while paused, so the counters stay those of the checkpoint
                counters[Counter.STOP] = 1
            counters[Counter.PAUSE] = request + 1
        return snapshot

    def shutdown(self) -> None:
        self.ctx.shared.counters[Counter.STOP] = 1
        for process in getattr(self, "processes", {}).values():
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)


def role_process_context(make_task: Callable[[], Task]):
    """The multiprocessing context role processes start from: a fork server that has imported torch,
    the toolkit and the task's module once, and forks each role from that state (spawn imports them
    again in every role: seconds of start-up per role on a small CPU, for every run of a session).
    Safe with CUDA: the server never touches the GPU, the roles initialise it after the fork. Where
    there is no fork server (Windows), spawn."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    factory_module = getattr(getattr(make_task, "func", make_task), "__module__", None)
    # Only read when the server starts (the first run of this process); later runs fork from it.
    context.set_forkserver_preload([__name__] + ([factory_module] if factory_module else []))
    return context


def _role_process(role: Role, cfg: TrainConfig, dims: Dims, shared: SharedState, state: dict | None, v_start: int,
                  p_start: int, make_task, state_queue, error_queue, device_queue) -> None:
    """Entry point of a role process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the trainer handles Ctrl-C and stops us
    _die_with_parent()
    try:
        worker = build_role(role, cfg, dims, shared, state, make_task)
        device_queue.put((role, worker.devices()))
        gate = RatioGate.for_config(cfg.pql)
        RoleLoop(role, worker, shared, gate, v_start, p_start).run(state_queue)
    except BaseException as error:  # report every failure to the trainer, then die non-zero
        error_queue.put((role, f"{type(error).__name__}: {error}", traceback.format_exc()))
        raise SystemExit(1) from error


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this role if its parent dies: the fork server, which exits as soon as
    the trainer does (kill -9, OOM), or the trainer itself under spawn. No orphaned role keeps a
    core busy. Elsewhere the roles still stop on the trainer's STOP counter."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() == 1:  # the trainer died before prctl took effect
        os._exit(1)
