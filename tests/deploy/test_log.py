"""The HDF5 session log: layout, SWMR reading while it is written, surviving kill -9, and clear
errors for files that are not (complete) deployment logs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from deploy.backends.base import Field
from deploy.errors import ExitCode, LogError
from deploy.log import FORMAT, LogFormatError, LogReader, LogWriter
from deploy.replay import Args as ReplayArgs
from deploy.replay import run as replay
from deploy.run import Args as RunArgs
from deploy.run import run as deploy
from tests.deploy.conftest import REPO, assert_finite_rows
from tests.deploy.helpers import start_deploy_run, wait_for_logged_steps


def test_writer_layout_and_live_reading(tmp_path):
    path = tmp_path / "live.h5"
    fields = {"obs": Field((3,), "float32"), "readings/joint_pos": Field((2,)), "time": Field(())}
    writer = LogWriter(path, 2, fields, {"joint_targets": Field((2,))}, {"robot": "dclaw", "info": {"a": [1, 2]}})
    with h5py.File(path, "r", libver="latest", swmr=True) as live:  # a second reader while writing
        for k in range(5):
            writer.append(0, {"obs": np.full(3, k, np.float32), "readings/joint_pos": np.array([k, -k]),
                              "time": np.float64(0.1 * k)})
        writer.set(0, {"reset/joint_targets": np.array([0.5, 0.25])})
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            live["episodes/0/obs"].refresh()
            if live["episodes/0/obs"].shape[0] == 5:
                break
            time.sleep(0.01)
        assert live["episodes/0/obs"][4].tolist() == [4, 4, 4]
        writer.end_episode(0, 0, "completed", 5, True, 1.5)
        writer.close()
    with LogReader(path) as reader:
        assert reader.attrs["format"] == FORMAT and reader.attrs["robot"] == "dclaw"
        assert not reader.file.swmr_mode  # a closed log opens normally, fully checked by HDF5
        episode, never = reader.episode(0), reader.episode(1)
        with pytest.raises(LogFormatError, match="episode 1 of .* never ran: the session ended after episode 0"):
            reader.episode_with_steps(1)
    assert episode.steps == 5 and episode.ran and never.steps == 0 and not never.ran
    np.testing.assert_array_equal(episode["joint_pos"][:, 1], -np.arange(5))  # hard link to readings/joint_pos
    assert episode.reset["joint_targets"].tolist() == [0.5, 0.25]
    assert episode.outcome == {"status": 0, "steps": 5, "success": 1, "return": 1.5, "message": "completed"}
    assert never.outcome["status"] == -1 and np.isnan(never.reset["joint_targets"]).all()


def test_log_reader_follows_a_live_writer(tmp_path):
    """LogReader on a file a LogWriter is appending to (flagged open for writing: SWMR mode with
    bounded retries): it sees the rows grow, reads back exactly what was appended, and a
    reader opened mid-session works too."""
    path = tmp_path / "growing.h5"
    writer = LogWriter(path, 1, {"obs": Field((4,), "float32"), "time": Field(())}, {}, {"robot": "dclaw"})
    try:
        with LogReader(path) as follower:
            assert follower.file.swmr_mode and follower.steps(0) == 0
            counts = []
            for k in range(60):
                writer.append(0, {"obs": np.arange(4, dtype=np.float32) + k, "time": np.float64(k)})
                if k % 20 == 19:
                    deadline = time.monotonic() + 10
                    while follower.steps(0) < k + 1:
                        assert time.monotonic() < deadline, "the flushed rows did not become visible"
                        time.sleep(0.01)
                    counts.append(follower.steps(0))
                    episode = follower.episode(0)
                    np.testing.assert_array_equal(episode["time"], np.arange(episode.steps))
                    np.testing.assert_array_equal(episode["obs"][:, 0], np.arange(episode.steps))
            assert counts == [20, 40, 60]
            with LogReader(path) as late:  # opened while the writer still has the file
                assert late.episode(0).steps == 60 and late.episode(0).outcome["status"] == -1
    finally:
        writer.close()
    with h5py.File(path, "r") as closed:  # closed in order: no writer flag left
        assert closed["episodes/0/obs"].shape == (60, 4)


def test_writer_failure_is_reported_to_the_control_loop(tmp_path):
    writer = LogWriter(tmp_path / "bad.h5", 1, {"obs": Field((3,), "float32")}, {}, {})
    writer.append(0, {"obs": np.zeros(4, np.float32)})  # wrong shape: the writer thread fails
    with pytest.raises(LogError, match="writing the log .* failed"):
        for _ in range(200):
            writer.check()
            time.sleep(0.01)
    with pytest.raises(LogError):
        writer.close()
    with pytest.raises(FileExistsError, match="--overwrite"):
        LogWriter(tmp_path / "bad.h5", 1, {}, {}, {})
    with pytest.raises(LogError, match="cannot create the log .*No such file or directory"):
        LogWriter(tmp_path / "missing-dir" / "x.h5", 1, {}, {}, {})


@pytest.mark.parametrize("victims", ["all", "control"])
def test_kill_9_keeps_every_flushed_step(victims, exported_policy, tmp_path):
    """SIGKILL a logging run mid-episode. ``all``: the control process and the log writer die at
    once, only the per-step SWMR flushes protect the data. ``control``: the writer outlives the
    control process, writes what it received and closes the file. Either way every step a live
    SWMR reader saw just before the kill reads back, complete and in order; replay works on it."""
    path = tmp_path / "killed.h5"
    proc = start_deploy_run("--policy", exported_policy, "--log", path, "--episode-steps", 2000, "--control-dt", 0.01,
                            "--rt-priority", 0)
    try:
        seen = wait_for_logged_steps(proc, path, 30)
        if victims == "all":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        if victims == "control":  # the orphaned writer finishes: the file ends up cleanly closed
            deadline = time.monotonic() + 20
            while True:
                try:
                    h5py.File(path, "r").close()  # a non-SWMR open fails while a writer has the file
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the writer did not close the file after the kill"
                    time.sleep(0.1)
    finally:  # only now: the orphaned writer is in the group too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with LogReader(path) as reader:
        episode = reader.episode(0)
    assert episode.steps >= seen  # every step flushed before the kill reads back
    # (How close the flushed steps stay to the loop, as a figure: benchmarks/deploy_jitter.py.)
    assert episode.outcome["status"] == -1  # never finished
    assert episode.ran
    assert_finite_rows(episode.data)
    assert np.all(np.diff(episode["time"]) > 0)
    assert len(episode["reward"]) in (episode.steps - 1, episode.steps)
    assert replay(ReplayArgs(file=path, mode="state")) == 0


def test_foreign_truncated_and_missing_files_are_named(tmp_path, capsys):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(LogFormatError, match=r"HDF5 file but not a deployment log .*\['data'\]"):
        LogReader(foreign)
    truncated = tmp_path / "truncated.h5"
    writer = LogWriter(tmp_path / "full.h5", 1, {"obs": Field((3,), "float32")}, {}, {})
    writer.close()
    truncated.write_bytes((tmp_path / "full.h5").read_bytes()[:1000])
    with pytest.raises(LogFormatError, match="truncated"):
        LogReader(truncated)
    with pytest.raises(LogFormatError, match="episode 3 does not exist"):
        LogReader(tmp_path / "full.h5").episode(3)
    for bad in (foreign, truncated, tmp_path / "missing.h5"):
        assert replay(ReplayArgs(file=bad)) == 2
    err = capsys.readouterr().err
    assert "not a deployment log" in err and "truncated" in err and "no such file" in err


def _killed_writer_log(path) -> None:
    """A log whose writer was SIGKILLed mid-session: flagged open for writing, so HDF5 reads it in
    SWMR mode, where a failing metadata checksum is retried (a live writer may be rewriting it)."""
    attrs = {"robot": "dclaw", **{f"setting_{i}": i for i in range(30)}}  # a session's many attributes
    writer = LogWriter(path, 3, {"obs": Field((30,), "float32"), "readings/joint_pos": Field((9,))},
                       {"joint_targets": Field((9,))}, attrs)
    for _ in range(200):
        writer.append(0, {"obs": np.zeros(30, np.float32), "readings/joint_pos": np.ones(9)})
    deadline = time.monotonic() + 20
    with LogReader(path) as live:
        while live.steps(0) < 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    os.kill(writer._process.pid, signal.SIGKILL)
    with pytest.raises(LogError):
        writer.close()


def test_truncated_and_corrupt_logs_fail_fast_with_status_2(make_policy, tmp_path):
    """`python -m deploy.replay` on a log cut at 20 kB (a closed one, and one whose writer was
    killed), and on a killed writer's log whose second part is zeros (full size: only bounded
    SWMR metadata retries end that). Each must exit 2 naming the damage; the subprocess timeout
    bounds the test (HDF5's default retries waited 2**k ns after attempt k: for minutes)."""
    closed = tmp_path / "closed.h5"
    assert deploy(RunArgs(policy=make_policy(), log=closed, episodes=2, episode_steps=30, realtime=False)) == 0
    killed = tmp_path / "killed.h5"
    _killed_writer_log(killed)
    data = {"closed": closed.read_bytes(), "killed": killed.read_bytes()}
    files = {}
    for name, content in data.items():
        files[f"{name}-cut"] = tmp_path / f"{name}-cut.h5"
        files[f"{name}-cut"].write_bytes(content[:20_000])
    files["killed-zeroed"] = tmp_path / "killed-zeroed.h5"
    files["killed-zeroed"].write_bytes(data["killed"][:20_000] + bytes(len(data["killed"]) - 20_000))
    procs = {name: subprocess.Popen([sys.executable, "-m", "deploy.replay", str(path)], cwd=REPO, text=True,
                                    env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
             for name, path in files.items()}
    try:
        results = {name: proc.communicate(timeout=60) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.kill()
    for name, (out, err) in results.items():
        assert procs[name].returncode == 2, (name, out, err)
    assert "is truncated: it has 20000 bytes, its HDF5 superblock records" in results["closed-cut"][1]
    assert "is truncated: it has 20000 bytes, its HDF5 superblock records" in results["killed-cut"][1]
    assert "is truncated or corrupt: its attributes cannot be read" in results["killed-zeroed"][1]
    assert "incorrect metadata checksum after all read attempts" in results["killed-zeroed"][1]
    with LogReader(killed) as reader:  # the intact file of the killed writer reads (in SWMR mode)
        assert reader.file.swmr_mode and reader.episode(0).steps == 200


def test_episodes_that_never_ran_are_told_from_empty_ones(make_policy, tmp_path, capsys):
    """A session stopped by a fault leaves groups for the episodes it never reached: the reader
    and deploy.replay say so, and tell them from an episode that started with no complete step
    (here: the policy's first action was NaN). Logs without the ``started`` marker (written
    before it existed) are told apart from what they recorded."""
    log = tmp_path / "stopped.h5"
    assert deploy(RunArgs(policy=make_policy(nan_action=True), log=log, episodes=3, episode_steps=10,
                          realtime=False)) == ExitCode.NON_FINITE
    capsys.readouterr()
    legacy = tmp_path / "legacy.h5"
    legacy.write_bytes(log.read_bytes())
    with h5py.File(legacy, "r+") as f:
        for n in range(3):
            del f[f"episodes/{n}/started"]
    for path in (log, legacy):
        with LogReader(path) as reader:
            episodes = [reader.episode(n) for n in range(3)]
            assert [e.ran for e in episodes] == [True, False, False]
            assert [e.steps for e in episodes] == [0, 0, 0]
            with pytest.raises(LogFormatError, match="episode 0 .* started but has no complete step; it ended with "
                                                     "status 5: the policy produced no usable action"):
                reader.episode_with_steps(0)
            with pytest.raises(LogFormatError, match=r"episode 2 .* never ran: the session stopped in episode 0 "
                                                     r"\(status 5: the policy produced no usable"):
                reader.episode_with_steps(2)
    assert replay(ReplayArgs(file=log, episode=2)) == 2
    err = capsys.readouterr().err
    assert "episode 2 of" in err and "never ran: the session stopped in episode 0" in err
    assert "no complete step" not in err
    assert replay(ReplayArgs(file=log, episode=0)) == 2
    err = capsys.readouterr().err
    assert "started but has no complete step" in err and "never ran" not in err
