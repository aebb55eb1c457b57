"""The Shadow Hand through the PQL trainer: the privileged critic observation flows through the
replay ring, the V-learner and the checkpoint; the actor and the exported policy see only the
actor observation."""

from benchmarks.learning_margin import CHECKS, measure
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


def test_sequential_training_reaches_near_goals_more_often(tmp_path):
    """Learning, not just running, counted in env steps and updates (sequential placement): the same
    result on a quiet or a busy machine. The check (benchmarks.learning_margin) reorients the cube to
    goals 0.45-0.5 rad away with a 0.4 rad tolerance, a first curriculum stage, for 24k env steps.

    Measured on the 2-core machine (``python -m benchmarks.learning_margin --check
    shadow_hand-reorient --seeds 0 1 2 3 4 5 6 7 8 9``): the greedy policy's return gains 141-518 and
    its consecutive successes 0.68-1.78, against the 60 and 0.2 asserted."""
    check = CHECKS[NAME]
    outcome = measure(check, seed=0, run_dir=tmp_path / "run")
    assert outcome["env_steps"] >= check.env_steps and outcome["v_updates"] > 5000
    for metric, need in check.min_gain.items():
        assert outcome["gain"][metric] > need, (metric, outcome["before"], outcome["late"])
