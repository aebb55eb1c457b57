"""The Shadow Hand through the PQL trainer: the privileged critic observation flows through the
replay ring, the V-learner and the checkpoint; the actor and the exported policy see only the
actor observation."""

import json

from robots import make_task
from toolkit.checkpoint import load_checkpoint
from toolkit.config import EnvConfig, LogConfig, PlacementConfig, PlacementKind, PQLConfig, StopConfig, TrainConfig
from toolkit.pql.trainer import train
from train.common import task_factory

NAME = "shadow_hand-reorient"


def test_asymmetric_observations_flow_through_the_trainer_and_export(tmp_path):
    task = make_task(NAME)
    obs_dim, critic_obs_dim, action_dim = task.obs_layout.size, task.critic_obs_layout.size, task.robot.num_joints
    assert critic_obs_dim > obs_dim
    cfg = TrainConfig(
        env=EnvConfig(task=NAME, num_envs=8), placement=PlacementConfig(PlacementKind.sequential),
        run_dir=str(tmp_path / "run"), stop=StopConfig(max_time_s=300.0, max_env_steps=8 * 16),
        pql=PQLConfig(actor_hidden=(32, 32), critic_hidden=(32, 32), batch_size=32, replay_size=4_000,
                      warmup_steps=4, critic_updates_per_actor_step=2),
        log=LogConfig(log_interval_s=1.0, eval_interval_s=1e6, eval_envs=2, checkpoint_interval_s=1e6,
                      tensorboard=False))
    result = train(cfg, task_factory(cfg.env))
    checkpoint = load_checkpoint(result.run_dir)
    assert checkpoint["counters"]["v_updates"] > 0 and checkpoint["counters"]["p_updates"] > 0

    # The critic learned from (critic observation, action); the actor maps the actor observation.
    assert checkpoint["critic"]["state_dict"]["q1.0.weight"].shape[1] == critic_obs_dim + action_dim
    assert checkpoint["critic_target"]["q2.0.weight"].shape[1] == critic_obs_dim + action_dim
    assert checkpoint["actor"]["state_dict"]["net.0.weight"].shape[1] == obs_dim
    assert checkpoint["obs_normalizer"]["mean"].shape == (obs_dim,)
    assert checkpoint["critic_obs_normalizer"]["mean"].shape == (critic_obs_dim,)
    # The privileged extras (velocities, fingertips) were seen: their running variance moved off 1.
    assert (checkpoint["critic_obs_normalizer"]["var"][obs_dim:] != 1.0).all()

    from deploy.policy import load_policy
    from export.onnx import export_policy, load_exportable

    out = result.run_dir / "policy.onnx"
    report = export_policy(load_exportable(result.run_dir), out, rollout_steps=3, rollout_envs=2,
                           exporter="torchscript")
    assert report.input_shape[1] == obs_dim and report.max_abs_diff <= report.tolerance
    assert load_policy(out).metadata.obs_layout == task.obs_layout


def test_a_short_process_mode_run_raises_the_training_return(tmp_path):
    """Learning, not just running, with the CPU defaults of ``python -m train.shadow_hand``.

    Measured on the 2-core machine (seeds 0 and 1): the training episodes' mean return goes from
    about -45 in the first 15 s (random warm-up, cube dropped after ~80 steps) to +40..+50 by
    120-150 s, with episodes lasting ~185 of 200 steps. Short greedy evaluations are too noisy to
    assert on at this budget (their start depends on the untrained actor), so the test reads the
    training episodes, hundreds per record."""
    cfg = TrainConfig(task=NAME, run_dir=str(tmp_path / "run"), max_time_s=150.0,
                      log=LogConfig(log_interval_s=15.0, eval_interval_s=1e9, eval_envs=8, checkpoint_interval_s=1e9,
                                    tensorboard=False))
    result = train(cfg)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    with_episodes = [r for r in records if r.get("episodes")]
    first, last = with_episodes[0], with_episodes[-2:]
    last_return = sum(r["episode_return"] for r in last) / len(last)
    last_length = sum(r["episode_length"] for r in last) / len(last)
    assert last_return > first["episode_return"] + 30, [(r["wall_time_s"], r["episode_return"]) for r in records]
    assert last_length > first["episode_length"] + 20, [(r["wall_time_s"], r["episode_length"]) for r in records]
