"""The Ray placement of the PQL roles: ``python -m train.dclaw --placement ray [--ray-address auto]``.

The same role classes (build_role), the same RoleLoop and RatioGate as the process mode; what
changes is how the roles reach each other, because shared memory does not cross nodes:

* Each role runs in its own Ray actor (one CPU; one GPU where its device is CUDA) on a
  private SharedState (``share=False``). The roles' code is unchanged: it reads and writes
  that object exactly as in the process mode.
* A small coordinator actor holds the global counters, the newest weights of each board and
  the transitions not yet taken by every learner. RoleLoop's ``poll`` hook (_Link) keeps one
  sync in flight per role: every ``_SYNC_EVERY_S`` while the role works, at once when its
  gate blocks it (a long poll: the coordinator answers when another role reports progress).
  A sync carries the counters the role owns and returns everybody else's, so gating stays
  counter-based. The others' counters are a little old, which only makes each gate stricter
  (a role under-counts the others' progress, never over-counts it): the ratios hold within
  ``ratio_slack`` as in the process mode, and staleness costs throughput, never correctness.
* Replay: as in PQL's original design each learner keeps its own ring. The Actor's ring is an
  _Outbox that queues each written batch; a sync ships the queued rows once as one object
  (``ray.put``) and the coordinator hands its reference to both learners, which copy the rows
  into their rings. Only new transitions move, and only references pass the coordinator.
* Weights (critic from the V-learner, policy from the P-learner, normalizer statistics from
  the Actor) ship as one flat vector per board and version, at most every ``_WEIGHTS_EVERY_S``;
  a role installs a board only when its version changed.
* The trainer (this process) mirrors the coordinator's counters, episode statistics, losses
  and the policy and normalizer boards into its own SharedState, so the trainer's main loop,
  record(), run_evaluation() and save() work unchanged: same metrics.jsonl, checkpoints and
  TrainResult as the process mode. A checkpoint pauses every role (each flushes its counters
  and weights, then hands over its state_dict) so the snapshot is consistent.

Failures: a role raising stops every role and raises TrainingError naming it; a Ray actor
that dies (killed, node lost) likewise. Ctrl-C checkpoints and stops, as in the process mode.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import signal
import threading
import time
import warnings
from typing import Any

import numpy as np
import torch

from toolkit.config import TrainConfig
from toolkit.pql.placement import ROLE_TIMEOUT_S, Placement, RoleLoop, RunContext, Snapshot, build_role
from toolkit.pql.ratio import RatioGate
from toolkit.pql.roles import LEARNERS, ROLES, Dims, Role, TrainingError, make_shared_state
from toolkit.pql.shared import Counter, ParamBoard, SharedState, read_counters

try:
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError:  # reported with the fix when --distributed ray is asked for
    ray = None

_SYNC_EVERY_S = 0.005  # a working role syncs at most this often (one sync in flight at a time)
_WEIGHTS_EVERY_S = 0.02  # ...and ships its newest weights at most this often
_LONG_POLL_S = 0.1  # a blocked role's sync waits this long at most for news
_TICK_S = 0.02  # the trainer's health check and counter mirror period
_MIRROR_WEIGHTS_EVERY_S = 0.5  # the trainer's policy/normalizer copy (for evaluation) is at most this old
_TRAINER = "trainer"  # the coordinator's news channel of the trainer (the others': the roles)

# A learner's ring fill level is its own: its ring holds what it has received so far. Every
# other counter a role takes from the coordinator, except those it owns (ROLES[role].owned).
_RING = (Counter.REPLAY_SIZE, Counter.REPLAY_NEXT)
_BOARD_OWNER = {board: role for role, spec in ROLES.items() for board in spec.boards}


def _board(shared: SharedState, name: str) -> ParamBoard:
    return shared.boards()[name]


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over an array Ray returned from its object store. Such arrays are read-only
    (mapped); we only ever copy out of them, so torch's not-writable warning does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _require_ray() -> None:
    if ray is None:
        raise TrainingError("--distributed ray needs Ray, which is not installed: pip install -e '.[distributed]'")


# --- inside the role actors ----------------------------------------------------------------
class _Outbox:
    """The Actor's replay ring under Ray: it keeps the ring's counters (the Actor's gate and
    the learners read them) and queues the rows for the learners, which store them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._batches: list[dict[str, torch.Tensor]] = []

    def write(self, counters: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        n = batch["obs"].shape[0]
        # Copy: the env may reuse its observation tensors on the next step.
        self._batches.append({k: v.detach().to("cpu", torch.float32, copy=True) for k, v in batch.items()})
        counters[Counter.REPLAY_NEXT] = (int(counters[Counter.REPLAY_NEXT]) + n) % self.capacity
        counters[Counter.REPLAY_SIZE] = min(int(counters[Counter.REPLAY_SIZE]) + n, self.capacity)

    def drain(self) -> dict[str, np.ndarray] | None:
        """Everything written since the last drain, as one batch (None if nothing)."""
        if not self._batches:
            return None
        batches, self._batches = self._batches, []
        return {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]}


class _Link:
    """One role's side of the coordinator protocol: RoleLoop's ``poll`` hook and state queue.

    At most one sync is in flight. A sync reports the counters this role owns, its queued
    transitions (Actor), episode statistics or last loss, and (rate-limited) its newest
    weights; its reply brings the others' counters, new transitions for this learner's ring
    and the boards whose version changed.
    """

    def __init__(self, role: Role, shared: SharedState, coordinator) -> None:
        self.role, self.shared, self.coordinator = role, shared, coordinator
        self.keep = set(ROLES[role].owned) | (set(_RING) if role in LEARNERS else set())
        self.shipped = {b: -1 for b, owner in _BOARD_OWNER.items() if owner is role}  # local versions sent
        self.known = {b: -1 for b, owner in _BOARD_OWNER.items() if owner is not role}  # coordinator versions held
        self.in_flight = None
        self.last_sync = self.last_weights = -math.inf

    def report(self, weights: bool) -> dict[str, Any]:
        counters = self.shared.counters
        report: dict[str, Any] = {"counters": {int(i): int(counters[i]) for i in ROLES[self.role].owned}}
        if self.role is Role.ACTOR:
            report["episode_stats"] = self.shared.episode_stats.tolist()
            batch = self.shared.replay.drain()
            if batch is not None:
                report["data"] = [ray.put(batch)]  # nested: Ray passes the reference, not the rows
        else:
            report["loss"] = float(self.shared.losses[ROLES[self.role].loss_slot])
        if weights:
            self.last_weights = time.perf_counter()
            report["boards"] = {}
            for b, shipped in self.shipped.items():
                board = _board(self.shared, b)
                version = int(board.version[0])  # this process is the board's only writer: never mid-write
                if version != shipped:
                    report["boards"][b] = [ray.put(board.data.cpu().numpy())]  # Ray moves host memory
                    self.shipped[b] = version
        return report

    def install(self, reply: dict[str, Any]) -> None:
        if reply["data"]:
            for batch in ray.get(reply["data"]):
                self.shared.replay.write(self.shared.counters, {k: _tensor(v) for k, v in batch.items()})
        for b, (version, refs) in reply["boards"].items():
            _board(self.shared, b).publish([_tensor(ray.get(refs[0]))])
            self.known[b] = version
        counters = self.shared.counters
        for i, value in enumerate(reply["counters"]):
            if i not in self.keep:
                counters[i] = value

    def _finish_in_flight(self) -> None:
        if self.in_flight is not None:
            reply, self.in_flight = ray.get(self.in_flight), None
            self.install(reply)

    def poll(self, worked: bool) -> None:
        """After each attempt at work: collect a finished sync; start the next one when due
        (a blocked role's sync is a long poll, which the role then waits on)."""
        if self.in_flight is not None:
            ready, _ = ray.wait([self.in_flight], timeout=0 if worked else _LONG_POLL_S * 2)
            if not ready:
                return
            self._finish_in_flight()
            if not worked:
                return  # the loop re-checks its gate with the fresh counters first
        now = time.perf_counter()
        if not worked or now - self.last_sync >= _SYNC_EVERY_S:
            self.last_sync = now
            weights = not worked or now - self.last_weights >= _WEIGHTS_EVERY_S
            self.in_flight = self.coordinator.sync.remote(self.role, self.report(weights), self.known, not worked)

    def put(self, item: tuple[Role, dict]) -> None:
        """RoleLoop's state queue (a pause): flush counters, transitions and weights, then hand
        the coordinator this role's state, so the trainer's snapshot is consistent."""
        role, state = item
        self._finish_in_flight()
        request = int(self.shared.counters[Counter.PAUSE])
        ray.get(self.coordinator.put_state.remote(role, request, self.report(weights=True), state))


class _RoleWorker:
    """A Ray actor running one role on a private SharedState kept in step by a _Link."""

    def __init__(self, role: Role, cfg: TrainConfig, dims: Dims, counters: list[int], boards: dict[str, np.ndarray],
                 state: dict | None, gate: RatioGate, v_start: int, p_start: int, make_task, coordinator) -> None:
        self.role, self.cfg, self.dims, self.counters, self.boards = role, cfg, dims, counters, boards
        self.state, self.gate, self.v_start, self.p_start = state, gate, v_start, p_start
        self.make_task, self.coordinator = make_task, coordinator

    def where(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address(), "gpus": ray.get_gpu_ids()}

    def run(self) -> None:
        """Build the role and run it until the trainer stops it; a raise reaches the trainer."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the trainer handles Ctrl-C and stops us
        cfg, role = self.cfg, self.role
        device = cfg.env.device if role is Role.ACTOR else cfg.learner_device()
        shared = make_shared_state(cfg.pql, self.dims, share=False, replay=role is not Role.ACTOR, device=device)
        if role is Role.ACTOR:
            shared.replay = _Outbox(cfg.pql.replay_size)
        shared.counters.copy_(torch.tensor(self.counters, dtype=torch.int64))
        for b, array in self.boards.items():  # the weights every role starts from (a resumed actor acts at once)
            _board(shared, b).publish([_tensor(array)])
        worker = build_role(role, cfg, self.dims, shared, self.state, self.make_task)
        self.state = self.boards = None  # the role holds them now
        link = _Link(role, shared, self.coordinator)
        RoleLoop(role, worker, shared, self.gate, self.v_start, self.p_start, poll=link.poll).run(link)


# --- the coordinator -------------------------------------------------------------------------
class _Coordinator:
    """Where the roles' counters, newest weights and pending transitions meet.

    An asyncio actor whose calls are a few dict operations: a blocked role's sync waits
    here until another role reports progress, so nobody spins. Transitions and weights
    pass as object references; the data moves between the roles' nodes directly.
    """

    def __init__(self, counters: list[int], boards: dict[str, np.ndarray], episode_stats: list[float]) -> None:
        self.counters = list(counters)
        self.episode_stats = list(episode_stats)
        self.losses = [math.nan, math.nan]
        self.boards = {b: (1, ray.put(array)) for b, array in boards.items()}  # version, reference
        self.data: collections.deque = collections.deque()  # (sequence number, reference)
        self.next_seq = 0
        self.taken = {role: 0 for role in LEARNERS}  # next sequence number each learner takes
        self.news = {name: asyncio.Event() for name in (*Role, _TRAINER)}
        self.states: dict[Role, tuple[int, dict]] = {}

    def _announce(self, by: str | None) -> None:
        for name, event in self.news.items():
            if name != by:
                event.set()

    def _take(self, name: str, report: dict[str, Any]) -> None:
        progress = False
        for i, value in report["counters"].items():
            progress |= self.counters[i] != value
            self.counters[i] = value
        if "episode_stats" in report:
            self.episode_stats = report["episode_stats"]
        if "loss" in report:
            self.losses[ROLES[name].loss_slot] = report["loss"]
        for ref in report.get("data", ()):
            self.data.append((self.next_seq, ref))
            self.next_seq += 1
        for b, refs in report.get("boards", {}).items():
            self.boards[b] = (self.boards[b][0] + 1, refs[0])
        if progress:  # gates read counters only: weights alone unblock nobody
            self._announce(by=name)

    def _newer_boards(self, known: dict[str, int]) -> dict[str, tuple[int, list]]:
        return {b: (version, [ref]) for b, (version, ref) in self.boards.items() if b in known and version > known[b]}

    async def _wait(self, name: str, ready, timeout: float) -> None:
        event = self.news[name]
        if not ready():
            event.clear()  # no lost wake-up: ready() and clear() run without a yield between them
            try:
                await asyncio.wait_for(event.wait(), timeout)
            except TimeoutError:
                pass

    async def sync(self, name: str, report: dict[str, Any], known: dict[str, int], blocked: bool) -> dict[str, Any]:
        self._take(name, report)
        event = self.news[name]
        if blocked:  # news since this role's last reply count: its event stays set until then
            await self._wait(name, lambda: event.is_set() or self.counters[Counter.STOP], _LONG_POLL_S)
        event.clear()
        reply = {"counters": list(self.counters), "boards": self._newer_boards(known), "data": []}
        if name in self.taken:
            first = self.taken[name]
            reply["data"] = [ref for seq, ref in self.data if seq >= first]
            self.taken[name] = self.next_seq
            oldest = min(self.taken.values())
            while self.data and self.data[0][0] < oldest:
                self.data.popleft()
        return reply

    async def put_state(self, name: str, request: int, report: dict[str, Any], state: dict) -> None:
        self._take(name, report)
        self.states[name] = (request, state)
        self._announce(by=name)

    async def pause(self) -> int:
        self.counters[Counter.PAUSE] += 1  # odd: paused (as in the process mode)
        self._announce(by=None)
        return self.counters[Counter.PAUSE]

    async def collect(self, request: int, timeout: float) -> dict[Role, dict] | None:
        """Every role's state for pause ``request`` once all have handed it over, else None."""
        def ready() -> bool:
            return all(self.states.get(role, (None,))[0] == request for role in Role)

        await self._wait(_TRAINER, ready, timeout)
        return {role: self.states.pop(role)[1] for role in Role} if ready() else None

    async def release(self, request: int, stop: bool) -> None:
        if stop:  # stop while paused, so the counters stay those of the checkpoint
            self.counters[Counter.STOP] = 1
        self.counters[Counter.PAUSE] = request + 1
        self._announce(by=None)

    async def stop(self) -> None:
        self.counters[Counter.STOP] = 1
        self._announce(by=None)

    async def snapshot(self, known: dict[str, int]) -> dict[str, Any]:
        return {"counters": list(self.counters), "episode_stats": list(self.episode_stats),
                "losses": list(self.losses), "boards": self._newer_boards(known)}


# --- the trainer's side ----------------------------------------------------------------------
def _uses_gpu(cfg: TrainConfig, role: Role) -> bool:
    if role is Role.ACTOR:
        return cfg.env.device.startswith("cuda") or cfg.env.sim == "mujoco_warp"
    return cfg.learner_device().startswith("cuda")


def _role_resources(cfg: TrainConfig) -> dict[Role, dict[str, float]]:
    """One CPU per role; one GPU per role whose device is CUDA (a share of one if fewer)."""
    cluster = ray.cluster_resources()
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    if cpus < len(Role):
        raise TrainingError(f"the Ray cluster has {cpus:g} CPUs but the three roles need one each: start Ray with "
                            "`ray start --head --num-cpus 3` (or more), or leave --ray-address out for a local Ray")
    on_gpu = [role for role in Role if _uses_gpu(cfg, role)]
    if on_gpu and gpus < 1:
        raise TrainingError(f"{', '.join(ROLES[r].name for r in on_gpu)} run on CUDA (--device / --sim / "
                            "--pql.learner-device) but the Ray cluster has no GPU: add GPU nodes, or choose cpu "
                            "devices")
    share = 1.0 if gpus >= len(on_gpu) else 1.0 / len(on_gpu)
    return {role: {"num_cpus": 1, "num_gpus": share if role in on_gpu else 0} for role in Role}


def _connect(cfg: TrainConfig) -> bool:
    """Join the caller's Ray, the cluster at --ray-address, or start a local one; returns
    whether this call started it (and so shuts it down at the end)."""
    _require_ray()
    if ray.is_initialized():  # a caller's Ray (a test, a notebook): use it as it is
        return False
    address = cfg.placement.ray_address
    if address:
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError) as error:
            raise TrainingError(f"cannot reach a Ray cluster at --ray-address {address}: "
                                f"{str(error).rstrip('.')}. Start one with `ray start --head` (a cluster with token "
                                "authentication also needs RAY_AUTH_MODE=token here), or leave --ray-address out "
                                "for a local Ray") from error
        return True
    # "local": a fresh instance even where `ray start` left a cluster address behind.
    ray.init(address="local", num_cpus=max(len(Role), os.cpu_count() or 1), include_dashboard=False,
             logging_level=logging.WARNING)
    return True


class RayPlacement(Placement):
    """Each role in a Ray actor; a coordinator actor keeps their counters and weights in step
    (see the module docstring), and the trainer's SharedState mirrors the coordinator's."""

    def __init__(self, ctx: RunContext, role_states: dict[Role, dict | None]) -> None:
        super().__init__(ctx, role_states)
        self.started_ray = False
        self.workers: dict[Role, Any] = {}
        self.coordinator = None
        self.runs: dict[Role, Any] = {}
        self.stopping = False
        self.known = {b: -1 for b in _BOARD_OWNER}
        self.last_weights = -math.inf

    def start(self) -> None:
        ctx = self.ctx
        cfg, shared = ctx.cfg, ctx.shared
        self.started_ray = _connect(cfg)
        resources = _role_resources(cfg)
        counters = shared.counters.tolist()
        boards = {b: _board(shared, b).data.cpu().numpy().copy() for b in _BOARD_OWNER}
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        self.coordinator = ray.remote(_Coordinator).options(num_cpus=0, scheduling_strategy=here).remote(
            counters, boards, shared.episode_stats.tolist())
        worker = ray.remote(_RoleWorker)
        self.workers = {
            role: worker.options(**resources[role]).remote(
                role, cfg, ctx.dims, counters, boards, self.role_states[role], ctx.gate, ctx.v_start, ctx.p_start,
                ctx.make_task, self.coordinator)
            for role in Role}
        try:
            where = ray.get([w.where.remote() for w in self.workers.values()], timeout=ROLE_TIMEOUT_S)
        except GetTimeoutError as error:
            raise TrainingError(f"Ray could not place the roles within {ROLE_TIMEOUT_S:.0f}s (they ask for "
                                f"{ {ROLES[r].name: res for r, res in resources.items()} }; available: "
                                f"{ray.available_resources()})") from error
        placed = dict(zip(self.workers, where, strict=True))
        self.write_roles(placed)
        for role, w in placed.items():
            gpus = f", GPU {w['gpus']}" if w["gpus"] else ""
            print(f"{ROLES[role].name}: Ray actor on {w['node']} (pid {w['pid']}{gpus})", flush=True)
        self.runs = {role: w.run.remote() for role, w in self.workers.items()}

    def check_health(self) -> None:
        """Raise TrainingError for a role that raised, died, or left its loop unasked."""
        refs = list(self.runs.values())
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        failures = []
        for role, ref in self.runs.items():
            if ref not in ready:
                continue
            name = ROLES[role].name
            try:
                ray.get(ref)
            except RayActorError as error:  # first: a dead role makes the others fail too
                raise TrainingError(f"{name} Ray actor died ({str(error).splitlines()[0]}); stopping all roles"
                                    ) from error
            except RayTaskError as error:
                cause = error.cause if error.cause is not None else error
                failures.append(TrainingError(f"{name} failed: {type(cause).__name__}: {cause}\n{error}"))
            else:
                if not self.stopping:
                    failures.append(TrainingError(f"{name} left its loop without being stopped"))
        if failures:
            raise failures[0]

    def mirror(self, weights: bool) -> None:
        """Copy the coordinator's counters, statistics and losses (and, if ``weights``, the newer
        boards) into the trainer's SharedState, which its logging, evaluation and saving read."""
        shared = self.ctx.shared
        snapshot = ray.get(self.coordinator.snapshot.remote(self.known if weights else {}))
        shared.counters.copy_(torch.tensor(snapshot["counters"], dtype=torch.int64))
        shared.episode_stats.copy_(torch.tensor(snapshot["episode_stats"], dtype=torch.float64))
        shared.losses.copy_(torch.tensor(snapshot["losses"], dtype=torch.float64))
        for b, (version, refs) in snapshot["boards"].items():
            _board(shared, b).publish([_tensor(ray.get(refs[0]))])
            self.known[b] = version
        if weights:
            self.last_weights = time.perf_counter()

    def tick(self) -> None:
        self.check_health()
        self.mirror(weights=time.perf_counter() - self.last_weights >= _MIRROR_WEIGHTS_EVERY_S)
        time.sleep(_TICK_S)

    def gather_states(self, final: bool) -> Snapshot:
        """Pause every role, take their states and the matching counters and weights, resume
        (``final``: stop instead)."""
        request = ray.get(self.coordinator.pause.remote())
        deadline = time.perf_counter() + ROLE_TIMEOUT_S
        try:
            while True:
                self.check_health()
                if time.perf_counter() > deadline:
                    raise TrainingError(f"the roles did not answer a checkpoint request within {ROLE_TIMEOUT_S:.0f}s")
                states = ray.get(self.coordinator.collect.remote(request, _LONG_POLL_S))
                if states is not None:
                    break
            self.mirror(weights=True)  # while paused: the counters and policy of these states
            snapshot = Snapshot(states, read_counters(self.ctx.shared.counters))
        finally:
            self.stopping |= final
            try:
                ray.get(self.coordinator.release.remote(request, final))
            except RayActorError:
                pass  # the coordinator is gone: shutdown() ends the roles
        return snapshot

    def shutdown(self) -> None:
        """Stop the roles (gracefully if they can), then end every actor of this run (and the Ray
        this placement started)."""
        self.stopping = True
        try:
            if self.coordinator is not None:
                try:
                    ray.get(self.coordinator.stop.remote(), timeout=10)
                    if self.runs:
                        ray.wait(list(self.runs.values()), num_returns=len(self.runs), timeout=10)
                except (RayActorError, GetTimeoutError):
                    pass  # a dead coordinator or a stuck role: ray.kill below ends them either way
                for handle in (*self.workers.values(), self.coordinator):
                    ray.kill(handle)
        finally:
            if self.started_ray:
                ray.shutdown()


__all__ = ["RayPlacement"]
