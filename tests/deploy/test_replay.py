"""Replaying logged sim episodes: observations recomputed from the logged physics state match the
logged ones, and open-loop re-execution of the logged targets reproduces the joint trajectory."""

from __future__ import annotations

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
