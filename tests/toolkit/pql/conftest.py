"""Small, fast training configs for the PQL tests (the dclaw-pose task learns quickly)."""

import pytest

from toolkit.config import EnvConfig, LogConfig, PlacementConfig, PlacementKind, PQLConfig, StopConfig, TrainConfig
from toolkit.pql.trainer import Trainer, train
from train.common import task_factory

TINY_PQL = PQLConfig(actor_hidden=(32, 32), critic_hidden=(32, 32), batch_size=64, replay_size=20_000, warmup_steps=4,
                     critic_updates_per_actor_step=4)


@pytest.fixture
def tiny_config(tmp_path):
    """``tiny_config(**changes)``: a sequential dclaw-pose run of a few seconds; ``changes`` are
    fields of TrainConfig or of its env, placement and stop groups (TrainConfig.replace)."""

    def make(**changes) -> TrainConfig:
        cfg = TrainConfig(
            env=EnvConfig(task="dclaw-pose", num_envs=8), pql=TINY_PQL,
            placement=PlacementConfig(PlacementKind.sequential), stop=StopConfig(max_time_s=6.0),
            log=LogConfig(log_interval_s=1.0, eval_interval_s=2.0, eval_envs=4, checkpoint_interval_s=2.0,
                          tensorboard=False),
            run_dir=str(tmp_path / "run"))
        return cfg.replace(**changes)

    return make


def run(cfg: TrainConfig, **kwargs):
    """Train ``cfg`` on the task its env names (what train.* does)."""
    return train(cfg, task_factory(cfg.env), **kwargs)


def trainer(cfg: TrainConfig) -> Trainer:
    return Trainer(cfg, task_factory(cfg.env))
