"""Our :class:`toolkit.envs.vec_env.VecEnv` as an rsl_rl ``VecEnv`` (rsl-rl-lib 5), for the PPO baseline.

Benchmark-only glue (``benchmarks.pql_vs_ppo``); nothing in ``toolkit/`` imports it. rsl_rl's
interface, and how this adapter fills it:

* ``num_envs``, ``num_actions``, ``device``, ``cfg`` (the env's ``EnvConfig`` as a dict);
* ``max_episode_length`` = the task's ``episode_steps``; ``episode_length_buf`` is the env's own
  per-env step counter (``VecEnv.episode_step``): setting it (rsl_rl's ``init_at_random_ep_len``)
  really shortens the running episodes, since the env truncates when it reaches the limit;
* ``get_observations()`` -> TensorDict ``{"policy": (N, O)}`` (plus ``"critic": (N, C)`` for an
  asymmetric task; :attr:`RslRlVecEnv.obs_groups` is the matching rsl_rl ``obs_groups``);
* ``step(actions)`` -> obs, rewards (N,) float32 (times ``reward_scale``), dones (N,) long
  (terminated or truncated), extras with ``"time_outs"`` (N,) bool = truncated and not terminated
  (rsl_rl's PPO bootstraps those with the value estimate) and, when episodes finished, ``"log"``
  with the finished episodes' ``success`` and (unscaled) ``return``.

The env resets finished envs inside ``step`` ("same-step" autoreset), which is what rsl_rl
expects: the returned observation of a done env is the first of its next episode.

:class:`DeterministicPolicy` turns an rsl_rl actor into the ``obs -> action`` callable that
``toolkit.pql.evaluate.evaluate`` runs: the Gaussian's mean, through the actor's own observation
normalizer.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import torch
from torch import nn

try:
    from rsl_rl.env import VecEnv as RslRlVecEnvBase
    from tensordict import TensorDict
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(f"the PPO baseline needs rsl-rl-lib >= 5 (and tensordict): pip install -e '.[bench]' "
                      f"({error})") from error

from toolkit.config import to_dict
from toolkit.envs.vec_env import VecEnv

#: rsl_rl's observation group names used here.
POLICY, CRITIC = "policy", "critic"


def rsl_rl_version() -> str:
    """The installed rsl-rl-lib version; raises ImportError for an API older than 5 (configs by class_name,
    separate actor/critic models and obs groups)."""
    try:
        installed = version("rsl-rl-lib")
    except PackageNotFoundError as error:
        raise ImportError("rsl_rl is importable but rsl-rl-lib is not installed as a distribution; "
                          "install it with pip install -e '.[bench]'") from error
    major = installed.split(".")[0]
    if not major.isdigit() or int(major) < 5:
        raise ImportError(f"the PPO baseline is written for the rsl-rl-lib 5 API (tested with 5.5); "
                          f"found rsl-rl-lib {installed}: pip install 'rsl-rl-lib>=5'")
    return installed


class RslRlVecEnv(RslRlVecEnvBase):
    """rsl_rl's view of ``env`` (see the module docstring). ``reward_scale`` multiplies the rewards
    PPO sees (PQL stores rewards times its own ``reward_scale``; the benchmark passes the same)."""

    def __init__(self, env: VecEnv, reward_scale: float = 1.0) -> None:
        if not reward_scale > 0:
            raise ValueError(f"reward_scale must be > 0, got {reward_scale}")
        self.env = env
        self.reward_scale = float(reward_scale)
        self.num_envs = env.num_envs
        self.num_actions = env.num_actions
        self.max_episode_length = int(env.task.episode_steps)
        self.device = env.device
        self.cfg = to_dict(env.cfg)
        obs, info = env.reset()
        self._obs = self._pack(obs, info)

    @property
    def episode_length_buf(self) -> torch.Tensor:
        """Steps taken in the current episode, (N,) long: the env's own counter."""
        return self.env.episode_step

    @episode_length_buf.setter
    def episode_length_buf(self, value: torch.Tensor) -> None:
        value = torch.as_tensor(value, device=self.device)
        if value.shape != self.env.episode_step.shape:
            raise ValueError(f"episode_length_buf must have shape {tuple(self.env.episode_step.shape)}, "
                             f"got {tuple(value.shape)}")
        self.env.episode_step.copy_(value)

    @property
    def obs_groups(self) -> dict[str, list[str]]:
        """rsl_rl ``obs_groups`` for this env: the actor sees ``policy``; the critic ``critic`` if the task
        is asymmetric, else ``policy``."""
        return {"actor": [POLICY], "critic": [CRITIC if self.env.task.asymmetric else POLICY]}

    def get_observations(self) -> TensorDict:
        return self._obs

    def step(self, actions: torch.Tensor) -> tuple[TensorDict, torch.Tensor, torch.Tensor, dict]:
        obs, reward, terminated, truncated, info = self.env.step(actions)
        self._obs = self._pack(obs, info)
        done = info["done"]
        extras: dict = {"time_outs": truncated & ~terminated}
        if bool(done.any()):
            extras["log"] = {"success": info["episode_success"][done].float(),
                             "return": info["episode_return"][done].float()}
        return self._obs, reward * self.reward_scale, done.long(), extras

    def _pack(self, obs: torch.Tensor, info: dict) -> TensorDict:
        groups = {POLICY: obs}
        if self.env.task.asymmetric:
            groups[CRITIC] = info["critic_obs"]
        return TensorDict(groups, batch_size=[self.num_envs], device=self.device)


class DeterministicPolicy(nn.Module):
    """obs (N, O) -> the rsl_rl actor's mean action (its observation normalizer included), for
    ``toolkit.pql.evaluate.evaluate(env, DeterministicPolicy(actor), None, seed)``."""

    def __init__(self, actor: nn.Module) -> None:
        super().__init__()
        self.actor = actor

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(TensorDict({POLICY: obs}, batch_size=[obs.shape[0]], device=obs.device))
