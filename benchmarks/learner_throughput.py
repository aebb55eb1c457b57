"""Learner throughput: V- and P-learner updates/s through the real role code against the bare compute.

    python -m benchmarks.learner_throughput --json                                    # CPU preset sizes
    python -m benchmarks.learner_throughput --device cuda --batch-size 8192 --hidden 512 256 128 --json
    python -m benchmarks.learner_throughput --device cuda --batch-size 8192 --hidden 512 256 128 --compile --json
    python -m benchmarks.learner_throughput --task shadow_hand-reorient --json        # asymmetric critic

Both sides run the same :class:`~toolkit.pql.v_learner.VLearner` / :class:`~toolkit.pql.p_learner.PLearner`
objects, built by the role code on a replay ring of ``--replay-size`` random transitions of the task's
sizes (``robots.make_task`` and ``Dims.of``), on ``--device``:

* role: ``Learner.work()``, what a role process runs per update: ``sync()`` (read newer weights and
  normalizers from the boards), ``sample()`` (indices drawn and rows gathered on the ring's device),
  ``step(batch)`` (loss, backward, clipped AdamW step, target update), ``publish()`` (the weights onto
  the board), the loss readback and the update counter;
* bare: ``step(batch)`` alone, on one pre-gathered batch of the same size.

The other roles' publishes are emulated by moving the boards' versions at the run's speed ratios (the
actor's weights are new every ``--critic-updates-per-policy-update`` V-learner updates, the critic every
P-learner update, the normalizers every ``--critic-updates-per-actor-step`` V-learner updates), so
``sync()`` copies as often as in a training run; the emulated writer costs a host integer.

Timing: the variants run in alternating chunks of ``--updates`` updates (V role, V bare, P role, P bare,
then again, ``--repeats`` times, after ``--warmup`` untimed updates of each) so that a loaded machine
slows all of them alike; rates are the medians over the repeats, and a ratio is the median of the
per-repeat ratios role / bare. On CUDA each chunk is bracketed by ``torch.cuda.synchronize()``; the
breakdown (a third chunk per repeat, the pieces of ``work()`` called one by one) is timed with CUDA
events between the pieces (no host sync), on the CPU with ``perf_counter``. The CPU runs torch on
``--torch-threads`` (1, as a role process: ``PQLConfig.torch_threads``).

JSON keys: v_updates_per_s, v_bare_updates_per_s, v_ratio, p_updates_per_s, p_bare_updates_per_s, p_ratio,
v_breakdown_ms and p_breakdown_ms ({sync, sample_gather, loss_step, publish, work}: medians, ms per update;
work = 1000 / role updates per s, so work minus the pieces is the rest of ``work()``: readback, counter),
device, device_name, batch, hidden, task, obs, critic_obs, action, asymmetric, replay_size, updates, repeats,
warmup, compile, bf16, critic_updates_per_actor_step, critic_updates_per_policy_update, torch_threads,
torch (version).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import tyro

from robots import TASKS, make_task
from toolkit.config import PQLConfig, TrainConfig
from toolkit.pql.learner import Learner
from toolkit.pql.p_learner import PLearner
from toolkit.pql.roles import Dims, make_normalizers, make_shared_state
from toolkit.pql.shared import Counter, ParamBoard, SharedState, module_tensors
from toolkit.pql.v_learner import VLearner
from train.common import PRESETS

PROG = "python -m benchmarks.learner_throughput"
#: The pieces of Learner.work() the breakdown times, in order.
PIECES = ("sync", "sample_gather", "loss_step", "publish")


@dataclass(frozen=True)
class Args:
    """Measure V- and P-learner updates/s through Learner.work() (sync, sample + gather, loss + step, publish)
    against the bare loss + optimizer step on a pre-gathered batch, same device, networks and batch."""

    device: str = "cpu"
    """Torch device of the learners and the replay ring (cpu, cuda, cuda:N)."""
    batch_size: int = 512
    """Samples per update (--preset cpu: 512, --preset gpu: 8192)."""
    hidden: tuple[int, ...] = (128, 128)
    """Actor and critic MLP widths (--preset cpu: 128 128, --preset gpu: 512 256 128)."""
    task: str = "dclaw-turn"
    """Registered task whose observation, critic observation and action sizes the ring holds."""
    compile: bool = False
    """torch.compile the losses (PQLConfig.compile; CUDA graphs on a GPU)."""
    bf16: bool = False
    """bf16 autocast of the forward and backward passes (PQLConfig.bf16)."""
    updates: int = 40
    """Updates per timed chunk."""
    repeats: int = 5
    """Rounds of alternating chunks; medians over them are reported."""
    warmup: int = 10
    """Untimed updates of each variant first (compilation, allocator, caches)."""
    replay_size: int = 1_000_000
    """Rows of the (full) replay ring the learners sample (PQLConfig.replay_size)."""
    critic_updates_per_actor_step: int | None = None
    """V-learner updates per new normalizer (beta a:v; None: 2 on a CPU, 8 on a GPU, as the presets)."""
    critic_updates_per_policy_update: int = 2
    """V-learner updates per P-learner update (beta p:v)."""
    torch_threads: int = 1
    """Torch intra-op threads (a role process uses PQLConfig.torch_threads = 1)."""
    seed: int = 0
    """Seed of the networks, the ring's contents and the sampling."""
    json: bool = False
    """Print only the JSON result line."""


def check_args(args: Args) -> torch.device:
    """The device ``args`` names; ValueError naming the flag for anything no run can use."""
    for name in ("batch_size", "updates", "repeats", "replay_size", "torch_threads",
                 "critic_updates_per_policy_update"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    if args.critic_updates_per_actor_step is not None and args.critic_updates_per_actor_step < 1:
        raise ValueError(f"--critic-updates-per-actor-step must be >= 1, got {args.critic_updates_per_actor_step}")
    if not args.hidden or min(args.hidden) < 1:
        raise ValueError(f"--hidden needs one or more widths >= 1, got {list(args.hidden)}")
    if args.task not in TASKS:
        raise ValueError(f"--task {args.task!r} is not a registered task; choose one of {sorted(TASKS)}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ValueError(f"--device {args.device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {args.device!r}: this benchmark runs on cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {args.device} needs a CUDA build of torch and a GPU; this torch "
                             f"({torch.__version__}) sees none. Use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def pql_config(args: Args, device: torch.device) -> PQLConfig:
    preset = PRESETS["gpu" if device.type == "cuda" else "cpu"](TrainConfig()).pql
    per_actor_step = args.critic_updates_per_actor_step or preset.critic_updates_per_actor_step
    return PQLConfig(actor_hidden=tuple(args.hidden), critic_hidden=tuple(args.hidden), batch_size=args.batch_size,
                     replay_size=args.replay_size, compile=args.compile, bf16=args.bf16,
                     torch_threads=args.torch_threads, learner_device=str(device),
                     critic_updates_per_actor_step=per_actor_step,
                     critic_updates_per_policy_update=args.critic_updates_per_policy_update)


def fill_replay(shared: SharedState, cfg: PQLConfig, seed: int) -> None:
    """A full ring of random transitions: normal observations, uniform actions in [-1, 1], small
    rewards, discount gamma^n (0 for one transition in ten: terminated)."""
    replay = shared.replay
    generator = torch.Generator(device=replay.device).manual_seed(seed)
    for name in ("obs", "next_obs", "critic_obs", "next_critic_obs"):
        if name in replay.fields():  # symmetric tasks: critic_obs is obs
            getattr(replay, name).normal_(generator=generator)
    replay.action.uniform_(-1.0, 1.0, generator=generator)
    replay.reward.normal_(0.0, 0.01, generator=generator)
    alive = torch.rand(replay.capacity, generator=generator, device=replay.device) >= 0.1
    replay.discount.copy_(alive.float() * cfg.gamma ** cfg.nstep)
    shared.counters[Counter.REPLAY_SIZE] = replay.capacity
    shared.counters[Counter.REPLAY_NEXT] = 0


class Bench:
    """The two learners on one shared state, and the emulated publishes of the roles around them."""

    def __init__(self, args: Args, device: torch.device) -> None:
        self.device = device
        self.cfg = cfg = pql_config(args, device)
        self.dims = dims = Dims.of(make_task(args.task))
        torch.manual_seed(args.seed)
        # As the trainer builds it for role processes: CPU shared memory (or CUDA tensors) for the ring and boards.
        self.shared = shared = make_shared_state(cfg, dims, share=True, device=device)
        fill_replay(shared, cfg, args.seed + 1)
        obs_norm, critic_norm = make_normalizers(cfg, dims)  # the actor's initial normalizers, as the trainer's
        shared.obs_norm_board.publish(module_tensors(obs_norm))
        shared.critic_obs_norm_board.publish(module_tensors(critic_norm))
        self.v = VLearner(cfg, dims, shared, seed=args.seed + 2, device=str(device))
        self.p = PLearner(cfg, dims, shared, seed=args.seed + 3, device=str(device))
        self.batches = {self.v: self.v.sample(), self.p: self.p.sample()}  # the bare side's pre-gathered batches
        self._norm_boards = [shared.obs_norm_board] + ([shared.critic_obs_norm_board] if dims.asymmetric else [])
        per_policy, per_actor = cfg.critic_updates_per_policy_update, cfg.critic_updates_per_actor_step
        # (board, every how many of this learner's updates it is new) for each learner.
        self._news = {self.v: [(shared.actor_board, per_policy)] + [(b, per_actor) for b in self._norm_boards],
                      self.p: [(shared.critic_board, 1)] + [(b, max(1, per_actor // per_policy))
                                                            for b in self._norm_boards]}
        self._count = {self.v: 0, self.p: 0}

    def others_publish(self, learner: Learner) -> None:
        """What the other roles published since ``learner``'s last update: move those boards'
        versions (the data stay; the reader copies them as it would copy new ones)."""
        self._count[learner] += 1
        for board, every in self._news[learner]:
            if self._count[learner] % every == 0:
                bump(board)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def role_chunk(self, learner: Learner, n: int) -> float:
        """Seconds for ``n`` updates through Learner.work()."""
        self.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            self.others_publish(learner)
            learner.work()
        self.synchronize()
        return time.perf_counter() - start

    def bare_chunk(self, learner: Learner, n: int) -> float:
        """Seconds for ``n`` bare loss + optimizer steps on the pre-gathered batch."""
        batch = self.batches[learner]
        self.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            learner.step(batch)
        self.synchronize()
        return time.perf_counter() - start

    def breakdown_chunk(self, learner: Learner, n: int) -> list[dict[str, float]]:
        """The pieces of work() called one by one, ms each, for ``n`` updates (CUDA events between
        them on a GPU: no host sync inside the chunk)."""
        events = self.device.type == "cuda"
        updates = []
        self.synchronize()
        for _ in range(n):
            self.others_publish(learner)
            marks = [_mark(events)]
            learner.sync()
            marks.append(_mark(events))
            batch = learner.sample()
            marks.append(_mark(events))
            learner.step(batch)
            marks.append(_mark(events))
            learner.publish()
            marks.append(_mark(events))
            updates.append(marks)
        self.synchronize()
        return [{name: _elapsed_ms(marks[i], marks[i + 1], events) for i, name in enumerate(PIECES)}
                for marks in updates]


def bump(board: ParamBoard) -> None:
    """A new version of ``board`` (as its writer's publish leaves it: even)."""
    board.version[0] = int(board.version[0]) + 2


def _mark(events: bool):
    if events:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    return time.perf_counter()


def _elapsed_ms(start, end, events: bool) -> float:
    return start.elapsed_time(end) if events else (end - start) * 1e3


def run(args: Args) -> dict:
    """Run the benchmark; returns the result dict (see the module docstring)."""
    device = check_args(args)
    torch.set_num_threads(args.torch_threads)
    bench = Bench(args, device)
    learners = {"v": bench.v, "p": bench.p}
    for learner in learners.values():  # warm-up: compilation, the allocator, caches; not timed
        bench.role_chunk(learner, args.warmup)
        bench.bare_chunk(learner, args.warmup)
        bench.breakdown_chunk(learner, min(args.warmup, 2))
    rates = {f"{key}_{side}": [] for key in learners for side in ("role", "bare")}
    pieces = {key: [] for key in learners}
    for _ in range(args.repeats):
        for key, learner in learners.items():
            rates[f"{key}_role"].append(args.updates / bench.role_chunk(learner, args.updates))
            rates[f"{key}_bare"].append(args.updates / bench.bare_chunk(learner, args.updates))
            pieces[key] += bench.breakdown_chunk(learner, args.updates)
    result: dict = {}
    for key in learners:
        role, bare = rates[f"{key}_role"], rates[f"{key}_bare"]
        result[f"{key}_updates_per_s"] = round(statistics.median(role), 2)
        result[f"{key}_bare_updates_per_s"] = round(statistics.median(bare), 2)
        result[f"{key}_ratio"] = round(statistics.median(r / b for r, b in zip(role, bare, strict=True)), 4)
    for key in learners:
        breakdown = {name: round(statistics.median(p[name] for p in pieces[key]), 4) for name in PIECES}
        breakdown["work"] = round(1e3 / result[f"{key}_updates_per_s"], 4)
        result[f"{key}_breakdown_ms"] = breakdown
    cfg, dims = bench.cfg, bench.dims
    result.update({
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch": args.batch_size,
        "hidden": list(args.hidden),
        "task": args.task,
        "obs": dims.obs,
        "critic_obs": dims.critic_obs,
        "action": dims.action,
        "asymmetric": dims.asymmetric,
        "replay_size": args.replay_size,
        "updates": args.updates,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "compile": cfg.compile,
        "bf16": cfg.bf16,
        "critic_updates_per_actor_step": cfg.critic_updates_per_actor_step,
        "critic_updates_per_policy_update": cfg.critic_updates_per_policy_update,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    })
    return result


def format_result(result: dict) -> str:
    lines = [f"{result['task']} on {result['device']} ({result['device_name']}): batch {result['batch']}, "
             f"hidden {'-'.join(map(str, result['hidden']))}, compile {result['compile']}, bf16 {result['bf16']}"]
    for key, name in (("v", "V-learner"), ("p", "P-learner")):
        b = result[f"{key}_breakdown_ms"]
        lines.append(f"  {name}: {result[f'{key}_updates_per_s']:,.1f} updates/s through work(), "
                     f"{result[f'{key}_bare_updates_per_s']:,.1f} bare, ratio {result[f'{key}_ratio']:.3f}; "
                     f"ms per update: sync {b['sync']:.3f}, sample+gather {b['sample_gather']:.3f}, "
                     f"loss+step {b['loss_step']:.3f}, publish {b['publish']:.3f} (work {b['work']:.3f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(Args, args=argv, prog=PROG)
    try:
        result = run(args)
    except (ValueError, MemoryError) as error:  # bad flags; a ring too large for the device
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    if not args.json:
        print(format_result(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
