"""Configuration dataclasses shared by every command.

tyro turns the field docstrings into ``--help``; the whole nested config is written to
``config.yaml`` beside every run. Dataclasses are frozen and hold no mutable defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal


@dataclass(frozen=True)
class EnvConfig:
    """Which task to simulate, how many copies, and where."""

    task: str = "dclaw-turn"
    """Registered task name (see robots.TASKS)."""
    num_envs: int = 64
    """Number of environments stepped together."""
    sim: Literal["mujoco_batch", "mujoco_warp"] = "mujoco_batch"
    """Physics backend: the MuJoCo C engine on CPU, or mujoco-warp (GPU)."""
    device: str = "cpu"
    """Torch device of the env's tensors (cuda with mujoco_warp)."""
    nthread: int = 0
    """Physics threads of the C engine (0: all CPUs)."""
    randomize: bool = False
    """Domain randomization: dynamics, noise, latency and pushes from the robot's DR table."""
    seed: int = 0
    """Seed of resets and domain randomization."""


def to_dict(config) -> dict:
    """A plain dict of a (nested) config dataclass, for YAML/JSON."""
    return asdict(config)


@dataclass(frozen=True)
class PQLConfig:
    """Parallel Q-Learning (arXiv 2307.12983).

    The defaults learn D'Claw turn on a 2-core CPU, where a critic update, not the simulator,
    is the scarce resource: smaller networks (128-128 instead of 512-256-128) and 2 critic
    updates of 512 samples per actor step of 64 envs. That is the paper's replay ratio (each
    transition sampled 2 * 512 / 64 = 16 times, as 8 * 8192 / 4096 with 4096 GPU envs). On a GPU
    use the paper's: --num-envs 4096 --pql.batch-size 8192 --pql.actor-hidden 512 256 128
    --pql.critic-hidden 512 256 128 --pql.critic-updates-per-actor-step 8."""

    actor_hidden: tuple[int, ...] = (128, 128)
    """Actor MLP widths (ELU)."""
    critic_hidden: tuple[int, ...] = (128, 128)
    """Critic MLP widths (ELU), per Q head."""
    batch_size: int = 512
    """Samples per V-learner and P-learner update."""
    actor_lr: float = 5e-4
    """AdamW learning rate of the P-learner."""
    critic_lr: float = 5e-4
    """AdamW learning rate of the V-learner."""
    grad_clip: float = 0.5
    """Gradient-norm clip of both learners."""
    gamma: float = 0.99
    """Discount per control step."""
    nstep: int = 3
    """n of the n-step TD targets (the actor writes n-step transitions)."""
    tau: float = 0.05
    """Soft update rate of the target critic."""
    target_noise_std: float = 0.8
    """Std of the target-policy smoothing noise (PQL's tgt_pol_std)..."""
    target_noise_clip: float = 0.2
    """...clipped to +- this (PQL's tgt_pol_noise_bound)."""
    num_atoms: int = 1
    """1: scalar double-Q critic; > 1 (e.g. 51): C51 distributional critic."""
    v_min: float = -10.0
    """C51 support minimum (in scaled-reward units)."""
    v_max: float = 10.0
    """C51 support maximum."""
    noise_min: float = 0.05
    """Exploration std of env 0; env i gets linspace(noise_min, noise_max)[i] (mixed exploration)."""
    noise_max: float = 0.8
    """Exploration std of the last env."""
    critic_updates_per_actor_step: int = 2
    """beta_a:v = 1:this (paper: 8 with 4096 envs). One actor step steps every env once."""
    critic_updates_per_policy_update: int = 2
    """beta_p:v = 1:this."""
    ratio_slack: int = 2
    """How many actor steps / policy updates a role may run ahead before it waits."""
    replay_size: int = 1_000_000
    """Transitions held by the shared replay ring."""
    warmup_steps: int = 32
    """Actor steps with uniform random actions before learning starts."""
    reward_scale: float = 0.01
    """Rewards are multiplied by this before storage."""
    normalize_obs: bool = True
    """Running mean/std observation normalization (shared by all roles, exported)."""
    obs_clip: float = 5.0
    """Normalized observations are clipped to +- this, identically in every role."""
    torch_threads: int = 1
    """Torch intra-op threads per role process."""
    compile: bool = False
    """torch.compile the learner update steps (opt-in speed-up)."""
    learner_device: str | None = None
    """Device of the V- and P-learners (None: the env's --device; cuda learns on a GPU even from CPU envs)."""


@dataclass(frozen=True)
class LogConfig:
    """Logging, evaluation and checkpointing."""

    log_interval_s: float = 10.0
    """Seconds between progress lines / metrics.jsonl records."""
    eval_interval_s: float = 30.0
    """Seconds between deterministic evaluations."""
    eval_envs: int = 64
    """Episodes per evaluation (one per env, no exploration noise)."""
    checkpoint_interval_s: float = 120.0
    """Seconds between checkpoints (one is always written at the end)."""
    tensorboard: bool = True
    """Write TensorBoard events into the run directory."""


@dataclass(frozen=True)
class TrainConfig:
    """Train a policy with PQL. The run directory gets config.yaml, metrics.jsonl,
    TensorBoard events and checkpoints/."""

    task: str = "dclaw-turn"
    """Registered task (robots.TASKS)."""
    num_envs: int = 64
    """Environments stepped by the actor."""
    randomize: bool = False
    """Domain randomization (the robot's DR table)."""
    seed: int = 0
    """Seed of networks, resets, DR and exploration."""
    sim: Literal["mujoco_batch", "mujoco_warp"] = "mujoco_batch"
    """Physics backend."""
    device: str = "cpu"
    """Device of the simulation tensors (cuda with mujoco_warp)."""
    nthread: int = 1
    """Physics threads of the C engine in the actor process."""
    mode: Literal["process", "sequential"] = "process"
    """process: Actor, V-learner, P-learner in three processes; sequential: interleaved in one."""
    distributed: Literal["none", "ray"] = "none"
    """ray: place the three roles as Ray actors (see --ray-address)."""
    ray_address: str | None = None
    """Ray cluster address for --distributed ray (None: start a local Ray)."""
    max_time_s: float = 1200.0
    """Stop after this many seconds of training."""
    max_env_steps: int = 50_000_000
    """Stop after this many env steps (all envs)."""
    stop_at_success: float | None = None
    """Stop once the evaluation success rate reaches this (e.g. 0.8)."""
    run_dir: str | None = None
    """Run directory (default runs/<task>-<date>-<time>)."""
    resume: str | None = None
    """Continue the run in this directory from its last checkpoint."""
    pql: PQLConfig = PQLConfig()
    """PQL hyper-parameters."""
    log: LogConfig = LogConfig()
    """Logging, evaluation and checkpointing."""

    def learner_device(self) -> str:
        """Where the V- and P-learners run: --pql.learner-device, else the env's --device."""
        return self.pql.learner_device or self.device

    def env_config(self, num_envs: int | None = None, seed: int | None = None) -> EnvConfig:
        return EnvConfig(task=self.task, num_envs=num_envs or self.num_envs, sim=self.sim, device=self.device,
                         nthread=self.nthread, randomize=self.randomize, seed=self.seed if seed is None else seed)


def from_dict(cls, data: dict):
    """Rebuild a (nested) config dataclass from ``to_dict`` output (e.g. a loaded config.yaml).

    Unknown keys are an error (a config from another toolkit version must not be half-read);
    missing keys take the defaults.
    """
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
