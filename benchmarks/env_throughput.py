"""Env throughput: our VecEnv vs the raw ``mujoco.batch.Batch`` on the same physics work.

    python -m benchmarks.env_throughput --task dclaw-turn --num-envs 256 --steps 300 --json

Both sides step the task's model with the same number of envs, threads and physics steps.
The env runs random relative-joint actions; an untimed first pass records the controls it
applied and the states its autoresets wrote, and the raw side replays them (ctrl writes,
``Batch.step`` and masked state writes at the resets), so both simulate the same trajectories
and contacts. The
printed ``ratio`` = env_steps_per_s / raw_steps_per_s is the share of raw physics speed that
the env keeps after its Python/torch work (observations, rewards, resets, DR). The two sides
are timed in alternating chunks of 10 control steps (so both see the same background load on a
shared machine); each repeat replays the whole run and each side's best repeat is reported.

The env's own torch work runs on ``--torch-threads`` intra-op threads (default 1, as in the
trainer's actor, ``--pql.torch-threads``): with the C engine the physics threads already own the
cores, and torch's idle pool threads spinning beside them cost the env ~5 % (measured: Shadow Hand
ratio 0.87 with torch's default 2 threads on 2 cores, 0.94-0.95 with 1).

JSON keys: task, num_envs, steps, repeats, nthread, torch_threads, physics_steps_per_env_step, sim, device,
randomize, env_steps_per_s, raw_steps_per_s (env steps summed over envs per second; the raw
side in env-step equivalents: physics steps / physics_steps_per_env_step), ratio,
raw_physics_steps_per_s, raw_sim and raw_device (the raw baseline always runs the MuJoCo C
engine on the CPU: with ``--sim mujoco_warp`` the ratio compares the GPU env with it).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Literal

import mujoco
import numpy as np
import torch
import tyro
from mujoco.batch import Batch

from robots import TASKS, make_task
from toolkit.config import EnvConfig
from toolkit.envs.vec_env import VecEnv

#: State the raw replay copies from the env: at the start and for autoreset envs.
_STATE = ("qpos", "qvel", "mocap_pos", "mocap_quat")
#: Control steps per alternating env/raw timing chunk.
_CHUNK = 10


@dataclass(frozen=True)
class Args:
    """Measure VecEnv steps per second against raw batched MuJoCo stepping."""

    task: str = "dclaw-turn"
    """Registered task name (robots.TASKS)."""
    num_envs: int = 256
    """Number of envs stepped together."""
    steps: int = 300
    """Control steps timed per repeat (each env steps this many times)."""
    repeats: int = 1
    """Timed replays of the whole run; the best of each side is reported."""
    nthread: int = 0
    """Physics threads of the C engine (0: all CPUs)."""
    torch_threads: int = 1
    """Torch intra-op threads of the env's tensor work (the trainer's actor uses 1)."""
    sim: Literal["mujoco_batch", "mujoco_warp"] = "mujoco_batch"
    """Physics backend of the VecEnv."""
    device: str = "cpu"
    """Torch device of the VecEnv (cuda with mujoco_warp)."""
    randomize: bool = False
    """Domain randomization on in the VecEnv."""
    seed: int = 0
    """Seed of resets, DR and the random actions."""
    json: bool = False
    """Print only the JSON result line."""


def run(args: Args) -> dict:
    """Run the benchmark; returns the result dict (see the module docstring)."""
    if args.task not in TASKS:
        make_task(args.task)  # raises the registry's error with the list of tasks
    for name in ("num_envs", "steps", "repeats", "torch_threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.torch_threads)
    cfg = EnvConfig(task=args.task, num_envs=args.num_envs, sim=args.sim, device=args.device,
                    nthread=args.nthread, randomize=args.randomize, seed=args.seed)
    env = VecEnv(make_task(args.task), cfg)
    n, substeps, sim = env.num_envs, env.substeps, env.sim
    nthread = getattr(sim, "nthread", None) or args.nthread or os.cpu_count()
    generator = torch.Generator().manual_seed(args.seed)
    actions = (torch.rand(args.steps, n, env.num_actions, generator=generator) * 2 - 1).to(env.device)

    # Untimed recording pass: the controls the env applies and the states its autoresets write.
    # The raw batch replays them, so both sides simulate the same trajectories (same contacts).
    env.reset(seed=args.seed)
    start_state = {name: getattr(sim, name).cpu().numpy().copy() for name in _STATE}
    ctrl: list[np.ndarray] = []
    done = np.zeros((args.steps, n), dtype=bool)
    reset_state = {name: np.empty((args.steps, *start_state[name].shape)) for name in _STATE}

    def recording_step(nstep: int, step=sim.step) -> None:  # the controls as the physics sees them
        ctrl.append(sim.ctrl.cpu().numpy().copy())
        step(nstep)

    sim.step = recording_step
    for t in range(args.steps):
        _, _, terminated, truncated, _ = env.step(actions[t])
        done[t] = (terminated | truncated).cpu().numpy()
        for name in _STATE:
            reset_state[name][t] = getattr(sim, name).cpu().numpy()
    del sim.step  # back to the class's method for the timed runs

    raw = Batch(env.model, n, nthread=nthread, persistent=True)
    raw_state = {name: raw.bind(name) for name in _STATE}
    raw_ctrl = raw.bind("ctrl")

    def env_chunk(steps: range) -> float:
        begin = time.perf_counter()
        for t in steps:
            env.step(actions[t])
        if env.device.type == "cuda":
            torch.cuda.synchronize(env.device)
        return time.perf_counter() - begin

    def raw_chunk(steps: range) -> float:
        begin = time.perf_counter()
        for t in steps:
            raw_ctrl[:] = ctrl[t]
            raw.step(nstep=substeps)
            if done[t].any():  # the env's autoreset, as a masked state write
                for name, value in raw_state.items():
                    value[done[t]] = reset_state[name][t][done[t]]
        return time.perf_counter() - begin

    env_time = raw_time = float("inf")
    for _ in range(args.repeats):
        env.reset(seed=args.seed)
        raw.reset()
        for name, value in start_state.items():
            raw_state[name][:] = value
        raw.forward()
        # Short alternating chunks: on a shared machine both sides see the same background load.
        env_sum = raw_sum = 0.0
        for first in range(0, args.steps, _CHUNK):
            steps = range(first, min(first + _CHUNK, args.steps))
            env_sum += env_chunk(steps)
            raw_sum += raw_chunk(steps)
        env_time, raw_time = min(env_time, env_sum), min(raw_time, raw_sum)

    env_steps = n * args.steps
    env_rate, raw_rate = env_steps / env_time, env_steps / raw_time
    return {
        "task": args.task,
        "num_envs": n,
        "steps": args.steps,
        "repeats": args.repeats,
        "nthread": int(nthread),
        "torch_threads": torch.get_num_threads(),
        "physics_steps_per_env_step": substeps,
        "sim": args.sim,
        "device": str(env.device),
        "randomize": args.randomize,
        "env_steps_per_s": round(env_rate, 1),
        "raw_steps_per_s": round(raw_rate, 1),
        "ratio": round(env_rate / raw_rate, 4),
        "raw_physics_steps_per_s": round(raw_rate * substeps, 1),
        "raw_sim": "mujoco_batch",
        "raw_device": "cpu",
        "mujoco": mujoco.__version__,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
    }


def main(args: Args) -> None:
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['task']}: {result['num_envs']} envs x {result['steps']} steps, {result['nthread']} threads, "
          f"{result['physics_steps_per_env_step']} physics steps per env step ({result['sim']}, {result['device']})")
    print(f"  VecEnv  {result['env_steps_per_s']:>12,.0f} env steps/s")
    print(f"  raw     {result['raw_steps_per_s']:>12,.0f} env steps/s "
          f"({result['raw_physics_steps_per_s']:,.0f} physics steps/s, {result['raw_sim']})")
    print(f"  ratio   {result['ratio']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(tyro.cli(Args))
