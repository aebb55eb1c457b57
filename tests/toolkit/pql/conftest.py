"""Small, fast training configs for the PQL tests (the dclaw-pose task learns quickly)."""

import dataclasses

import pytest

from toolkit.config import LogConfig, PQLConfig, TrainConfig


@pytest.fixture
def tiny_config(tmp_path):
    def make(**overrides) -> TrainConfig:
        cfg = TrainConfig(
            task="dclaw-pose", num_envs=8, mode="sequential", run_dir=str(tmp_path / "run"), max_time_s=6.0,
            pql=PQLConfig(actor_hidden=(32, 32), critic_hidden=(32, 32), batch_size=64, replay_size=20_000,
                          warmup_steps=4, critic_updates_per_actor_step=4),
            log=LogConfig(log_interval_s=1.0, eval_interval_s=2.0, eval_envs=4, checkpoint_interval_s=2.0,
                          tensorboard=False))
        return dataclasses.replace(cfg, **overrides)

    return make
