"""The HDF5 session log: layout, SWMR reading while it is written, surviving kill -9, and clear
errors for files that are not (complete) deployment logs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import datetime

import h5py
import numpy as np
import pytest

from deploy.backends.base import Field
from deploy.errors import LogError
from deploy.log import FORMAT, LogFormatError, LogReader, LogWriter
from deploy.replay import Args as ReplayArgs
from deploy.replay import run as replay
from tests.deploy.conftest import REPO, assert_finite_rows


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
        episode, empty = reader.episode(0), reader.episode(1)
    assert episode.steps == 5 and empty.steps == 0
    np.testing.assert_array_equal(episode["joint_pos"][:, 1], -np.arange(5))  # hard link to readings/joint_pos
    assert episode.reset["joint_targets"].tolist() == [0.5, 0.25]
    assert episode.outcome == {"status": 0, "steps": 5, "success": 1, "return": 1.5, "message": "completed"}
    assert empty.outcome["status"] == -1 and np.isnan(empty.reset["joint_targets"]).all()


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
    SWMR reader saw, and every step run up to about the kill, reads back; replay works on it."""
    path = tmp_path / "killed.h5"
    cmd = [sys.executable, "-m", "deploy.run", "--policy", str(exported_policy), "--log", str(path),
           "--episode-steps", "400", "--control-dt", "0.02"]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        seen, deadline = 0, time.monotonic() + 60
        while seen < 40:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the run did not log 40 steps within 60 s"
            if path.exists():
                try:
                    with LogReader(path) as live:
                        seen = live.steps(0)
                except (LogFormatError, KeyError, OSError):
                    pass  # caught between file creation and the switch to SWMR
            time.sleep(0.05)
        if victims == "all":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.time()
        proc.wait(timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
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
    with LogReader(path) as reader:
        created = datetime.fromisoformat(reader.attrs["created"]).timestamp()
        episode = reader.episode(0)
    assert episode.steps >= seen
    # Steps the loop ran before the kill (10 % slack for a loaded machine): only the last is at risk.
    expected = (killed_at - created) / 0.02
    assert episode.steps >= 0.9 * expected - 3, (episode.steps, expected)
    assert episode.outcome["status"] == -1  # never finished
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
