"""The trainer end to end: checkpoints and resume, faults, every placement's paths, learning."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.learning_margin import CHECKS, measure
from tests.toolkit.pql.conftest import run, trainer
from toolkit.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from toolkit.config import PlacementKind, PQLConfig
from toolkit.pql.placement import build_role
from toolkit.pql.roles import ROLES, NonFiniteLossError, Role, TrainingError
from toolkit.pql.shared import module_tensors
from toolkit.pql.trainer import make_placement
from toolkit.pql.v_learner import VLearner
from train.common import task_factory

REPO = Path(__file__).resolve().parents[3]


def _flat(state_dict):
    return torch.cat([v.flatten().float() for v in state_dict.values()])


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_checkpoint_then_resume_restores_weights_counters_and_optimizers(tiny_config):
    result = run(tiny_config(max_time_s=4.0))
    checkpoint = load_checkpoint(result.run_dir)
    assert checkpoint["counters"]["v_updates"] > 0 and checkpoint["counters"]["p_updates"] > 0

    resumed = trainer(tiny_config(resume=str(result.run_dir), run_dir=None, max_time_s=2.0))
    for key in ("actor_steps", "env_steps", "v_updates", "p_updates"):
        assert resumed.counters()[key] == checkpoint["counters"][key], key

    def build(role):
        return build_role(role, resumed.cfg, resumed.dims, resumed.shared, resumed.role_states[role],
                          resumed.make_task)

    # The boards every role reads at start carry the checkpoint's weights.
    p_learner = build(Role.P_LEARNER)
    torch.testing.assert_close(_flat(p_learner.actor.state_dict()), _flat(checkpoint["actor"]["state_dict"]))
    board = resumed.shared.actor_board.data[: sum(t.numel() for t in module_tensors(p_learner.actor))]
    torch.testing.assert_close(board, torch.cat([t.flatten() for t in module_tensors(p_learner.actor)]))
    assert p_learner.optimizer.state_dict()["state"][0]["step"] == checkpoint["actor_optimizer"]["state"][0]["step"]
    v_learner = build(Role.V_LEARNER)
    torch.testing.assert_close(_flat(v_learner.critic_target.state_dict()), _flat(checkpoint["critic_target"]))
    actor = build(Role.ACTOR)
    torch.testing.assert_close(actor.obs_norm.mean, checkpoint["obs_normalizer"]["mean"])

    # A briefly trained sequential-mode checkpoint exports with parity.
    _export_and_check(result.run_dir)

    # And training continues from there.
    again = resumed.run()
    assert again.counters["v_updates"] > checkpoint["counters"]["v_updates"]
    assert again.counters["env_steps"] > checkpoint["counters"]["env_steps"]


def test_resume_takes_the_saved_config_with_this_invocations_placement_stop_and_log(tiny_config):
    first = run(tiny_config(max_time_s=3.0, seed=7, task_options=("episode_steps=20",)))
    saved = load_checkpoint(first.run_dir)["counters"]
    saved_wall = saved["wall_time_s"]
    # Another num_envs and seed on the command line do not change what the run is...
    cfg = tiny_config(resume=str(first.run_dir), run_dir=None, num_envs=3, seed=1, max_time_s=6.0,
                      placement=PlacementKind.process)
    resumed = trainer(cfg)
    assert (resumed.cfg.env.num_envs, resumed.cfg.env.seed) == (8, 7)
    assert resumed.cfg.env.task_options == ("episode_steps=20",)
    # ... but placement, stop and log are this invocation's: a process-mode continuation.
    assert resumed.cfg.placement.placement is PlacementKind.process and resumed.cfg.stop.max_time_s == 6.0
    result = resumed.run()
    checkpoint = load_checkpoint(result.run_dir)
    assert checkpoint["counters"]["wall_time_s"] >= saved_wall + 6.0  # wall time carried over and grown
    assert checkpoint["counters"]["env_steps"] > saved["env_steps"]  # the process-mode roles did work
    walls = [r["wall_time_s"] for r in _records(result.run_dir)]
    assert walls == sorted(walls) and walls[-1] >= checkpoint["counters"]["wall_time_s"]
    assert checkpoint["task_overrides"] == {"episode_steps": 20}


def test_resume_of_missing_or_corrupt_run_is_a_clear_error(tiny_config, tmp_path):
    with pytest.raises(CheckpointError, match="no config.yaml"):
        trainer(tiny_config(resume=str(tmp_path / "nowhere")))
    result = run(tiny_config(max_time_s=2.0))
    newest = list_checkpoints(result.run_dir)[-1]
    newest.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        trainer(tiny_config(resume=str(result.run_dir), run_dir=None))


def test_starting_over_an_existing_run_is_refused(tiny_config):
    run(tiny_config(max_time_s=2.0))
    with pytest.raises(CheckpointError, match="--resume"):
        trainer(tiny_config())


def test_checkpoints_rotate_to_the_newest_three_and_a_failed_write_leaves_them_intact(tmp_path, monkeypatch):
    for steps in (10, 20, 30, 40, 50):
        save_checkpoint(tmp_path, {"counters": {"env_steps": steps}}, steps)
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"ckpt_{s:012d}.pt" for s in (30, 40, 50)]

    def disk_full(state, handle, *args, **kwargs):
        # Mid-write the new checkpoint is not visible under its name, and half of it reaches the disk.
        assert not (tmp_path / "checkpoints" / f"ckpt_{60:012d}.pt").exists()
        assert [p.name for p in list_checkpoints(tmp_path)] == [f"ckpt_{s:012d}.pt" for s in (30, 40, 50)]
        handle.write(b"half a checkpoint")
        handle.flush()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path, {"counters": {"env_steps": 60}}, 60)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"ckpt_{s:012d}.pt" for s in (30, 40, 50)]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == \
        [f"ckpt_{s:012d}.pt" for s in (30, 40, 50)]  # no temporary file left behind
    assert load_checkpoint(tmp_path)["counters"]["env_steps"] == 50


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_config, monkeypatch):
    """Training runs normally and checkpoints, then the critic loss turns NaN: the run stops with
    NonFiniteLossError, and the checkpoint written before is intact, finite and exportable."""
    cfg = tiny_config(max_time_s=60.0)
    plain_loss = VLearner._loss

    def diverging_loss(self, batch):
        loss = plain_loss(self, batch)
        return loss * float("nan") if list_checkpoints(cfg.run_dir) else loss

    monkeypatch.setattr(VLearner, "_loss", diverging_loss)
    with pytest.raises(NonFiniteLossError, match="critic loss is nan"):
        run(cfg)
    checkpoints = list_checkpoints(cfg.run_dir)
    assert checkpoints, "the good checkpoint written before the failure is gone"
    checkpoint = load_checkpoint(checkpoints[-1])
    assert checkpoint["counters"]["v_updates"] > 0
    for key in ("actor", "critic"):
        assert all(bool(torch.isfinite(v).all()) for v in checkpoint[key]["state_dict"].values()), key
    monkeypatch.undo()
    _export_and_check(Path(cfg.run_dir))
    assert issubclass(NonFiniteLossError, TrainingError)


def test_a_role_failing_in_process_mode_stops_the_trainer_naming_it(tiny_config):
    cfg = tiny_config(placement=PlacementKind.process, max_time_s=120.0,
                      pql=dataclasses.replace(tiny_config().pql, reward_scale=float("inf")))
    with pytest.raises(TrainingError, match="V-learner failed: NonFiniteLossError: critic loss"):
        run(cfg)
    # A periodic checkpoint may precede the failure; none holds a critic update with the infinite loss.
    for path in list_checkpoints(cfg.run_dir):
        assert load_checkpoint(path)["counters"]["v_updates"] == 0


def test_process_mode_end_to_end_holds_the_ratios(tiny_config):
    # Enough actor steps that the gates' slack (2 steps) is small against the totals.
    cfg = tiny_config(placement=PlacementKind.process, max_time_s=300.0, max_env_steps=8 * 200,
                      pql=PQLConfig(actor_hidden=(32, 32), critic_hidden=(32, 32), batch_size=64, replay_size=20_000,
                                    warmup_steps=4, critic_updates_per_actor_step=8,
                                    critic_updates_per_policy_update=2))
    result = run(cfg)
    assert result.stop_reason == "max_env_steps"
    last = _records(result.run_dir)[-1]
    for key in ("env_steps", "v_updates", "p_updates", "episode_return", "eval_success", "wall_time_s"):
        assert key in last, key
    assert last["v_updates"] > 100 and last["p_updates"] > 50
    assert last["critic_per_actor_step"] == pytest.approx(8, rel=0.1)
    assert last["critic_per_policy_update"] == pytest.approx(2, rel=0.1)
    checkpoint = load_checkpoint(result.run_dir)
    assert checkpoint["counters"]["v_updates"] == last["v_updates"]
    # roles.json: each role's process, and the devices it reported from inside it (its network, the replay ring).
    where = json.loads((result.run_dir / "roles.json").read_text())
    assert set(where) == {spec.name for spec in ROLES.values()}
    assert len({w["pid"] for w in where.values()}) == 3 and os.getpid() not in {w["pid"] for w in where.values()}
    assert all(w["device"] == "cpu" and w["replay"] == "cpu" for w in where.values()), where
    _export_and_check(result.run_dir)


def _scripted_success(monkeypatch, successes: list[float]) -> list[float]:
    """Make the trainer's evaluations report ``successes`` in turn (then the last one again); returns
    the list of what they reported."""
    import toolkit.pql.trainer as trainer_module

    real, reported = trainer_module.evaluate, []

    def scripted(*args, **kwargs):
        out = real(*args, **kwargs)
        reported.append(successes[min(len(reported), len(successes) - 1)])
        return {**out, "eval_success": reported[-1]}

    monkeypatch.setattr(trainer_module, "evaluate", scripted)
    return reported


def test_stop_at_success_ends_the_run_at_the_first_evaluation_that_reaches_it(tiny_config, monkeypatch):
    reported = _scripted_success(monkeypatch, [0.1, 0.5, 0.9])
    log = dataclasses.replace(tiny_config().log, eval_interval_s=0.0)  # every tick: counted, not timed
    result = run(tiny_config(max_time_s=120.0, stop_at_success=0.8, log=log))
    assert result.stop_reason == "stop_at_success" and result.eval_success == 0.9
    assert reported == [0.1, 0.5, 0.9]  # on past the two below the threshold, no evaluation after the third
    records = _records(result.run_dir)
    assert records[-1]["eval_success"] == 0.9 and result.checkpoint is not None
    assert load_checkpoint(result.checkpoint)["counters"]["env_steps"] == records[-1]["env_steps"]


def test_a_success_below_stop_at_success_never_stops_the_run(tiny_config, monkeypatch):
    reported = _scripted_success(monkeypatch, [0.9])
    log = dataclasses.replace(tiny_config().log, eval_interval_s=0.0)  # every tick: counted, not timed
    result = run(tiny_config(max_time_s=120.0, max_env_steps=8 * 50, stop_at_success=0.95, log=log))
    assert result.stop_reason == "max_env_steps" and len(reported) >= 2


def _export_and_check(run_dir: Path) -> None:
    """The run's latest checkpoint exports to a verified ONNX file (export.onnx checks parity
    with torch on random and rollout observations) that deploy.policy reads back."""
    from deploy.policy import load_policy as load_onnx
    from export.onnx import export_policy, load_exportable

    out = run_dir / "policy.onnx"
    report = export_policy(load_exportable(run_dir), out, rollout_steps=5, rollout_envs=2, exporter="torchscript")
    assert report.max_abs_diff <= 1e-5
    policy = load_onnx(out)
    assert policy.metadata.training_step == load_checkpoint(run_dir)["counters"]["env_steps"]


def _start_cli(run_dir: Path, checkpoint_interval_s: float = 1000.0) -> subprocess.Popen:
    command = [sys.executable, "-m", "train.dclaw", "--task", "dclaw-pose", "--num-envs", "4", "--max-time-s", "300",
               "--run-dir", str(run_dir), "--pql.actor-hidden", "16", "--pql.critic-hidden", "16",
               "--pql.batch-size", "32", "--pql.replay-size", "5000", "--log.no-tensorboard",
               "--log.checkpoint-interval-s", str(checkpoint_interval_s), "--log.log-interval-s", "1"]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_learning(process: subprocess.Popen, run_dir: Path) -> dict[str, int]:
    """Role PIDs, once the roles run and the learners have updated (a metrics record says so)."""
    deadline = time.time() + 180
    while True:
        assert process.poll() is None, process.stdout.read()
        assert time.time() < deadline, "the roles never started learning"
        metrics = run_dir / "metrics.jsonl"
        if (run_dir / "roles.json").exists() and metrics.exists() and \
                any(json.loads(line)["v_updates"] > 0 for line in metrics.read_text().splitlines()):
            return {name: where["pid"] for name, where in json.loads((run_dir / "roles.json").read_text()).items()}
        time.sleep(0.2)


def test_a_killed_role_makes_the_trainer_exit_non_zero_and_keeps_the_checkpoints_before(tmp_path):
    run_dir = tmp_path / "run"
    process = _start_cli(run_dir, checkpoint_interval_s=0.5)
    try:
        pids = _wait_for_learning(process, run_dir)
        deadline = time.time() + 120
        while not (list_checkpoints(run_dir) and load_checkpoint(run_dir)["counters"]["v_updates"] > 0):
            assert process.poll() is None and time.time() < deadline, "no periodic checkpoint of a learner update"
            time.sleep(0.1)
        os.kill(pids["V-learner"], signal.SIGKILL)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, output
    assert "V-learner process died (signal 9)" in output
    # The crash writes nothing more; the checkpoints from before it load, with finite learned weights.
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint["counters"]["v_updates"] > 0
    for key in ("actor", "critic"):
        assert all(bool(torch.isfinite(v).all()) for v in checkpoint[key]["state_dict"].values()), key
    for pid in pids.values():  # no orphaned role keeps running
        with pytest.raises(ProcessLookupError):
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.1)


def test_a_role_killed_while_its_state_is_in_transit_is_named(tiny_config):
    """A role's checkpoint state crosses as file descriptors fetched from the role itself: a role
    killed between sending and the trainer's reading breaks the transfer (EOFError or
    ConnectionResetError, seen under load). The trainer names the dead role, as for any death."""
    session = trainer(tiny_config(placement=PlacementKind.process))
    placement = make_placement(session.context(), session.role_states)
    placement.start()
    v_learner = placement.processes[Role.V_LEARNER]

    class KilledInTransit:
        def get(self, timeout):
            os.kill(v_learner.pid, signal.SIGKILL)
            raise EOFError

    try:
        placement.state_queue = KilledInTransit()
        with pytest.raises(TrainingError, match=r"V-learner process died \(signal 9\)"):
            placement.gather_states(False)
    finally:
        placement.shutdown()


def test_ctrl_c_checkpoints_stops_every_role_and_exits_130(tmp_path):
    run_dir = tmp_path / "run"
    process = _start_cli(run_dir)
    try:
        pids = _wait_for_learning(process, run_dir)
        assert list_checkpoints(run_dir) == []  # the interval is long: only Ctrl-C writes one
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output
    assert "stopped (interrupted)" in output
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint["counters"]["v_updates"] > 0
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.1)


@pytest.mark.parametrize("seed", [0, 1])
def test_sequential_training_improves_the_evaluation_return(tmp_path, seed):
    """Learning, not just running: the greedy policy's return on dclaw-pose rises (counted env steps
    and updates in one process: the same result on a quiet or a busy machine).

    Measured on the 2-core machine (``python -m benchmarks.learning_margin --check dclaw-pose``, seeds
    0-9): from about -25 untrained (the joints drift off) the return gains 9.4-18.8, against the
    5 asserted."""
    check = CHECKS["dclaw-pose"]
    outcome = measure(check, seed=seed, run_dir=tmp_path / "run")
    assert outcome["env_steps"] >= check.env_steps and outcome["v_updates"] > 3000
    assert outcome["gain"]["eval_return"] > check.min_gain["eval_return"], (outcome["before"], outcome["late"])


def test_the_trainer_is_handed_its_task(tiny_config):
    """The toolkit knows no robot: the task comes from the factory it is handed, which must
    build the task the config names."""
    cfg = tiny_config()
    with pytest.raises(ValueError, match="builds 'dclaw-turn' but the config names 'dclaw-pose'"):
        trainer_of = task_factory(dataclasses.replace(cfg.env, task="dclaw-turn"))
        from toolkit.pql.trainer import Trainer

        Trainer(cfg, trainer_of)


def test_eval_videos_go_to_the_run_dir_and_tensorboard_and_progress_reads_plainly(tiny_config, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from toolkit.video import GLUnavailableError, ensure_gl, read_video

    try:
        ensure_gl()
    except GLUnavailableError as error:
        pytest.skip(f"no OpenGL here: {error}")
    cfg = tiny_config(max_time_s=5.0, log=dataclasses.replace(tiny_config().log, tensorboard=True,
                                                              video_interval_s=1.0))
    result = run(cfg)
    videos = sorted((result.run_dir / "videos").glob("eval_*.mp4"))
    assert videos, "no evaluation video was written"
    frames, fps = read_video(videos[-1])
    assert len(frames) == 30 and frames.shape[1:] == (240, 320, 3)  # one dclaw-pose episode, a frame per step
    assert fps == pytest.approx(10.0)
    events = EventAccumulator(str(result.run_dir), size_guidance={"images": 0})
    events.Reload()
    assert "eval/video" in events.Tags()["images"]
    image = events.Images("eval/video")[-1]
    assert image.encoded_image_string[:6] in (b"GIF89a", b"GIF87a") and (image.width, image.height) == (320, 240)

    out = capsys.readouterr().out
    # Not a terminal: plain lines only (no ESC, no carriage return), with the banner, time left and summary.
    assert "\x1b" not in out and "\r" not in out
    assert "tensorboard --logdir" in out and "left " in out and "next: python -m export.onnx" in out
