"""Configuration dataclasses shared by every command.

tyro turns the field docstrings into ``--help``; the whole nested config is written to
``config.yaml`` beside every run. Dataclasses are frozen and hold no mutable defaults.
A training config has five groups: ``env`` (what is simulated), ``pql`` (the algorithm),
``placement`` (where the roles run), ``stop`` (when training ends) and ``log``. On the
command line the env, placement and stop options are flat (``--randomize``, ``--num-envs``,
``--placement``, ``--max-time-s``); the pql and log ones keep their prefix (``--pql.batch-size``).
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from dataclasses import dataclass
from typing import Annotated, Literal

import tyro
import yaml


class PlacementKind(enum.Enum):
    """Where the three PQL roles run (:mod:`toolkit.pql.placement`)."""

    process = "process"  #: three processes sharing memory (the default)
    sequential = "sequential"  #: interleaved in one process (tests, debugging; one GPU)
    ray = "ray"  #: Ray actors, on one machine or a cluster


@dataclass(frozen=True)
class EnvConfig:
    """Which task to simulate, how many copies, and where."""

    task: str = "dclaw-turn"
    """Registered task name (see robots.TASKS)."""
    task_options: tuple[str, ...] = ()
    """Task settings as KEY=VALUE (YAML values), e.g. `episode_steps=80 success_tolerance=0.1`; recorded in the
    checkpoints and the exported policy's metadata."""
    num_envs: int = 64
    """Number of environments stepped together."""
    sim: Literal["mujoco_batch", "mujoco_warp"] = "mujoco_batch"
    """Physics backend: the MuJoCo C engine on CPU, or mujoco-warp (GPU)."""
    device: str = "cpu"
    """Torch device of the env's tensors (cuda with mujoco_warp)."""
    nthread: int = 1
    """Physics threads of the C engine (0: all CPUs)."""
    randomize: bool = False
    """Domain randomization: dynamics, noise, latency and pushes from the robot's DR table."""
    calibration: str | None = None
    """A calibration file (python -m deploy.calibrate): its fitted values become the nominal model, DR scales
    around them."""
    seed: int = 0
    """Seed of resets, domain randomization, networks and exploration."""

    def task_overrides(self) -> dict:
        """``task_options`` as the keyword arguments of the task's constructor."""
        return parse_task_options(self.task_options)


def parse_task_options(options: tuple[str, ...]) -> dict:
    """``("episode_steps=80", "goal_offset=[0.3, 1.0]")`` -> ``{"episode_steps": 80, "goal_offset": (0.3, 1.0)}``
    (YAML values; lists become tuples, as dataclass task settings are)."""
    out = {}
    for option in options:
        key, sep, text = option.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"task option {option!r} is not KEY=VALUE (e.g. episode_steps=80)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"task option {option!r}: the value is not YAML: {error}") from None
        out[key.strip()] = tuple(value) if isinstance(value, list) else value
    return out


@dataclass(frozen=True)
class PQLConfig:
    """Parallel Q-Learning (arXiv 2307.12983).

    The CPU defaults (--preset cpu) learn D'Claw turn on a 2-core CPU, where a critic update, not the
    simulator, is the scarce resource: smaller networks (128-128 instead of 512-256-128) and 2 critic updates of
    512 samples per actor step of 64 envs. That is the paper's replay ratio (each transition sampled
    2 * 512 / 64 = 16 times, as 8 * 8192 / 4096 with 4096 GPU envs). --preset gpu has the paper's values."""

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
    """Transitions held by the replay ring (on the learners' device)."""
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
    """torch.compile the learner update steps (opt-in speed-up; CUDA graphs on a GPU)."""
    bf16: bool = False
    """bf16 autocast of the learners' forward and backward passes (opt-in; weights stay float32)."""
    learner_device: str | None = None
    """Device of the V- and P-learners and the replay ring (None: the env's --device)."""
    loss_readback_updates: int = 0
    """Learners copy their loss to the host (and check it is finite) every this many updates; 0: every update on
    a CPU, every 100 on a GPU (no host sync per update)."""


@dataclass(frozen=True)
class PlacementConfig:
    """Where the Actor, V-learner and P-learner run."""

    placement: PlacementKind = PlacementKind.process
    """process: three processes; sequential: interleaved in one process; ray: Ray actors (see --ray-address)."""
    ray_address: str | None = None
    """Ray cluster address for --placement ray (None: start a local Ray)."""


@dataclass(frozen=True)
class StopConfig:
    """When training ends (whichever comes first)."""

    max_time_s: float = 1200.0
    """Stop after this many seconds of training."""
    max_env_steps: int = 50_000_000
    """Stop after this many env steps (all envs)."""
    stop_at_success: float | None = None
    """Stop once the evaluation success rate reaches this (e.g. 0.8)."""


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
    video_interval_s: float | None = None
    """Render one evaluation episode to runs/<name>/videos/ and TensorBoard every this many seconds (None: no
    videos)."""


@dataclass(frozen=True)
class TrainConfig:
    """Train a policy with PQL. The run directory gets config.yaml, metrics.jsonl,
    TensorBoard events and checkpoints/."""

    env: Annotated[EnvConfig, tyro.conf.OmitArgPrefixes] = EnvConfig()
    """What is simulated."""
    pql: PQLConfig = PQLConfig()
    """PQL hyper-parameters."""
    placement: Annotated[PlacementConfig, tyro.conf.OmitArgPrefixes] = PlacementConfig()
    """Where the roles run."""
    stop: Annotated[StopConfig, tyro.conf.OmitArgPrefixes] = StopConfig()
    """When training ends."""
    log: LogConfig = LogConfig()
    """Logging, evaluation and checkpointing."""
    preset: Literal["cpu", "gpu"] = "cpu"
    """Named defaults: cpu (64 envs, 128-128 nets, batch 512, beta a:v 1:2) or gpu (4096 envs, 512-256-128 nets,
    batch 8192, beta a:v 1:8, p:v 1:2, the paper's values); single options still override them."""
    run_dir: str | None = None
    """Run directory (default runs/<task>-<date>-<time>)."""
    resume: str | None = None
    """Continue the run in this directory from its last checkpoint, with this invocation's placement, stop and log
    options (the rest is the saved config)."""

    def learner_device(self) -> str:
        """Where the V- and P-learners (and the replay ring) run: --pql.learner-device, else the env's --device."""
        return self.pql.learner_device or self.env.device

    def env_config(self, num_envs: int | None = None, seed: int | None = None) -> EnvConfig:
        """The env settings, with another env count or seed (evaluation)."""
        return dataclasses.replace(self.env, num_envs=num_envs or self.env.num_envs,
                                   seed=self.env.seed if seed is None else seed)

    def replace(self, **changes) -> TrainConfig:
        """A copy with ``changes``, each a field of this config or of its env, placement or stop
        group (``cfg.replace(num_envs=8, max_time_s=6.0, placement=PlacementKind.sequential)``)."""
        groups = {name: {} for name in _FLAT_GROUPS}
        top = {}
        for key, value in changes.items():
            group = next((g for g in _FLAT_GROUPS if key in _field_names(type(getattr(self, g)))), None)
            if key in _field_names(TrainConfig) and not (group and key == "placement" and not
                                                         isinstance(value, PlacementConfig)):
                top[key] = value
            elif group is not None:
                groups[group][key] = value
            else:
                raise TypeError(f"TrainConfig has no field '{key}' (nor its {', '.join(_FLAT_GROUPS)} groups)")
        for group, values in groups.items():
            if values:
                top[group] = dataclasses.replace(top.get(group, getattr(self, group)), **values)
        return dataclasses.replace(self, **top)

    def resumed_with(self, invocation: TrainConfig, run_dir: str) -> TrainConfig:
        """This (saved) config continued by ``invocation``: its placement, stop and log options."""
        return dataclasses.replace(self, placement=invocation.placement, stop=invocation.stop, log=invocation.log,
                                   resume=run_dir, run_dir=run_dir)


#: The groups whose options are flat on the command line (and in TrainConfig.replace).
_FLAT_GROUPS = ("env", "placement", "stop")


def _field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def to_dict(config) -> dict:
    """A plain dict of a (nested) config dataclass, for YAML/JSON (enums as their values)."""
    return _plain(dataclasses.asdict(config))


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def from_dict(cls, data: dict):
    """Rebuild a (nested) config dataclass from ``to_dict`` output (e.g. a loaded config.yaml).

    Unknown keys are an error (a config from another toolkit version must not be half-read);
    missing keys take the defaults.
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if typing.get_origin(hint) is Annotated:
            hint = typing.get_args(hint)[0]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)
        elif isinstance(hint, type) and issubclass(hint, enum.Enum):
            value = hint(value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
