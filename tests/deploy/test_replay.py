"""Replaying logged episodes: observations recomputed from the logged physics state match the
logged ones; open-loop re-execution of the logged targets reproduces a sim trajectory, departs
from it as soon as the targets are altered, and measures the sim-to-real gap of a hardware log."""

from __future__ import annotations

import re
import shutil

import h5py
import numpy as np

from deploy.log import LogReader
from deploy.replay import Args, replay_actions, replay_state, run
from deploy.run import Args as RunArgs
from deploy.run import run as deploy


def test_replay_of_a_randomized_sim_episode(exported_policy, tmp_path, capsys):
    path = tmp_path / "sim.h5"
    assert deploy(RunArgs(policy=exported_policy, log=path, episodes=2, episode_steps=20, randomize=True,
                          realtime=False, seed=3)) == 0
    with LogReader(path) as reader:
        episodes = [reader.episode(0), reader.episode(1)]
        assert not np.allclose(episodes[0].reset["dr/friction"], episodes[1].reset["dr/friction"])
        state = replay_state(reader, episodes[1])
        actions = replay_actions(reader, episodes[1])
    assert state.steps == 20 and state.max_diff <= 1e-6
    # Exact physics state and DR values restored: the open-loop replay is the run itself.
    assert actions.max_diff <= 1e-9
    np.testing.assert_allclose(actions.replayed_joint_pos, episodes[1]["joint_pos"], atol=1e-9)

    plot = tmp_path / "replay.png"
    assert run(Args(file=path, episode=1, mode="actions", plot=plot)) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    assert "max divergence 0.000e+00" in capsys.readouterr().out


def test_state_replay_detects_a_tampered_observation(exported_policy, tmp_path, capsys):
    path = tmp_path / "cli.h5"
    assert deploy(RunArgs(policy=exported_policy, log=path, episode_steps=8, realtime=False)) == 0
    assert run(Args(file=path, mode="state")) == 0
    with h5py.File(path, "r+") as f:  # a log whose observation disagrees with its state
        f["episodes/0/obs"][3, 20] += 0.01
    assert run(Args(file=path, mode="state")) == 1
    assert "worst step 3" in capsys.readouterr().out


def test_actions_replay_diverges_when_the_logged_targets_are_altered(exported_policy, tmp_path):
    """A replay that re-executes the targets (not one that hands back the logged positions): add
    an offset to the logged targets from step 5 on and the divergence appears exactly one step
    later and grows with the offset."""
    path = tmp_path / "sim.h5"
    assert deploy(RunArgs(policy=exported_policy, log=path, episode_steps=20, randomize=True, realtime=False,
                          seed=1)) == 0
    divergence = {}
    for offset in (0.0, 0.02, 0.08):
        altered = tmp_path / f"altered_{offset}.h5"
        shutil.copy(path, altered)
        with h5py.File(altered, "r+") as f:
            f["episodes/0/joint_targets"][5:] += np.where(np.arange(9) % 3 == 0, -offset, offset)  # inwards
        with LogReader(altered) as reader:
            divergence[offset] = replay_actions(reader, reader.episode(0)).per_step
    assert divergence[0.0].max() <= 1e-9
    for offset in (0.02, 0.08):
        assert divergence[offset][:6].max() <= 1e-9  # positions up to step 5 come before the altered targets
        assert divergence[offset][6:].min() > 1e-4
    assert divergence[0.08][6:].mean() > 2 * divergence[0.02][6:].mean()


def test_replay_of_a_hardware_log_measures_the_sim_to_real_gap(make_policy, emulator, tmp_path, capsys):
    """A log of the D'Claw backend (through the emulated bus) has no sim state: state mode recomputes
    the observations from the logged readings; actions mode starts the sim from the logged joint
    angles and reports how far MuJoCo's fingers end up from the (emulated) real ones."""
    path = tmp_path / "hw.h5"
    assert deploy(RunArgs(policy=make_policy(), backend="dclaw", port=emulator.path, log=path, episode_steps=20,
                          control_dt=0.05, reset_speed=3.0, rt_priority=0)) == 0
    capsys.readouterr()
    assert run(Args(file=path, mode="state")) == 0
    assert "state replay (logged readings): max |obs - logged obs| = 0.000e+00" in capsys.readouterr().out
    assert run(Args(file=path, mode="actions")) == 0
    out = capsys.readouterr().out
    assert "actions replay from logged joint_pos, valve_angle" in out
    with LogReader(path) as reader:
        episode = reader.episode(0)
        assert "sim/state" not in episode.data
        report = replay_actions(reader, episode)
    assert f"max divergence {report.max_diff:.3e} rad" in out
    assert report.per_step[0] <= 1e-9  # started from the logged angles
    # The emulator's motor (first-order, 50 ms) is not MuJoCo's actuator: a real gap, but both
    # follow the same commands, so it stays a fraction of the motion.
    assert 1e-3 < report.max_diff < 0.5
    motion = np.abs(episode["joint_pos"] - episode["joint_pos"][0]).max()
    assert motion > 0.1 and np.abs(report.replayed_joint_pos - report.replayed_joint_pos[0]).max() > 0.1
    assert np.isfinite(report.replayed_joint_pos).all()
    assert re.search(r"step\s+19\s+\d\.\d{3}e[-+]\d\d", out)
