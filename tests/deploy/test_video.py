"""Videos of deployment sessions and logged episodes (deploy.video): frames per step on the task's
camera, a hardware log shown on the robot model, clear errors, and nothing logged changes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from deploy.errors import ExitCode
from deploy.log import LogReader
from deploy.run import Args, run
from deploy.video import LogVideoError, write_log_video
from tests.deploy.conftest import all_torque_off
from toolkit.video import GLUnavailableError, ensure_gl, read_video


@pytest.fixture(autouse=True)
def _needs_gl():
    try:
        ensure_gl()
    except GLUnavailableError as error:
        pytest.skip(f"no OpenGL here: {error}")


def test_a_sim_session_video_has_a_frame_per_step_and_moves(make_policy, tmp_path, capsys):
    video, log = tmp_path / "eval.mp4", tmp_path / "eval.h5"
    assert run(Args(policy=make_policy(weight_scale=2.0), episodes=2, episode_steps=15, realtime=False, video=video,
                    log=log)) == ExitCode.OK
    frames, fps = read_video(video)
    assert frames.shape == (30, 240, 320, 3) and fps == pytest.approx(10.0)
    moving = [float(np.abs(frames[k + 1].astype(int) - frames[k]).mean()) for k in range(14)]
    assert min(moving) > 0.05  # the fingers move in every step of the first episode
    assert "video frames 30/30" in capsys.readouterr().out


def test_video_never_changes_what_is_logged(make_policy, tmp_path):
    policy = make_policy(weight_scale=2.0)
    logs = [tmp_path / "plain.h5", tmp_path / "with_video.h5"]
    for log, video in zip(logs, (None, tmp_path / "v.mp4"), strict=True):
        assert run(Args(policy=policy, episodes=1, episode_steps=10, realtime=False, log=log, seed=4,
                        video=video)) == ExitCode.OK
    with LogReader(logs[0]) as a, LogReader(logs[1]) as b:
        first, second = a.episode(0), b.episode(0)
        for name in ("obs", "actions", "joint_targets", "sim/state", "reward"):
            np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_bad_video_paths_and_cameras_are_refused_before_anything_runs(make_policy, tmp_path, capsys):
    policy = make_policy()
    for args, message in ((dict(video=tmp_path / "missing" / "v.mp4"), "does not exist"),
                          (dict(video=tmp_path / "v.avi"), "must end in .mp4"),
                          (dict(video=tmp_path / "v.mp4", camera="ceiling"), "no camera 'ceiling'")):
        assert run(Args(policy=policy, log=tmp_path / "never.h5", **args)) == ExitCode.USAGE
        assert message in capsys.readouterr().err
        assert not (tmp_path / "never.h5").exists()  # refused before a log was made


def test_a_hardware_log_is_shown_on_the_robot_model(make_policy, emulator, tmp_path):
    log = tmp_path / "hw.h5"
    assert run(Args(policy=make_policy(weight_scale=2.0), backend="dclaw", port=emulator.path, log=log,
                    episode_steps=12, reset_speed=3.0, reset_timeout=3.0, rt_priority=0)) == ExitCode.OK
    assert all_torque_off(emulator)
    path, count = write_log_video(log, tmp_path / "hw.mp4")
    frames, _ = read_video(path)
    assert count == 12 and frames.shape == (12, 240, 320, 3)
    assert float(np.abs(frames[-1].astype(int) - frames[0]).mean()) > 0.1  # the logged joint angles moved it


def test_an_episode_without_the_readings_to_pose_the_model_names_them(make_policy, tmp_path):
    log = tmp_path / "cut.h5"
    assert run(Args(policy=make_policy(), episodes=1, episode_steps=5, realtime=False, log=log)) == ExitCode.OK
    with h5py.File(log, "r+") as f:  # a hardware-like log (no sim state) that lost its valve readings
        del f["episodes/0/sim/state"]
        del f["episodes/0/readings/valve_angle"]
        names = [n for n in f.attrs["step_datasets"][1:-1].replace('"', "").split(", ")
                 if n not in ("sim/state", "readings/valve_angle")]
        f.attrs["step_datasets"] = "[" + ", ".join(f'"{n}"' for n in names) + "]"
    with pytest.raises(LogVideoError, match=r"lacks the readings \['valve_angle'\]"):
        write_log_video(log, tmp_path / "cut.mp4")


def test_replay_video_of_a_hardware_log_and_the_reexecuted_sim_beside_it(make_policy, emulator, tmp_path):
    from deploy.replay import Args as ReplayArgs
    from deploy.replay import run as replay

    log = tmp_path / "hw.h5"
    assert run(Args(policy=make_policy(weight_scale=2.0), backend="dclaw", port=emulator.path, log=log,
                    episode_steps=10, reset_speed=3.0, reset_timeout=3.0, rt_priority=0)) == ExitCode.OK
    assert replay(ReplayArgs(file=log, video=tmp_path / "log.mp4")) == 0
    assert read_video(tmp_path / "log.mp4")[0].shape == (10, 240, 320, 3)
    assert replay(ReplayArgs(file=log, mode="actions", video=tmp_path / "both.mp4")) == 0
    both, _ = read_video(tmp_path / "both.mp4")
    assert both.shape[0] == 10 and both.shape[2] > 2 * 320  # two frames side by side
    assert replay(ReplayArgs(file=log, video=tmp_path / "x.gif")) == 2  # refused, with the reason
