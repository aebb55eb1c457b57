"""The D'Claw backend's own safety checks, on the emulated bus through the real dynamixel_sdk:
the operating-mode check and the repeated pings at open, the reset timeout of a blocked finger, and retrying a single
lost status packet without calling it a fault (while losing the retry too is one)."""

from __future__ import annotations

import numpy as np
import pytest

from deploy import dynamixel_protocol as dxl
from deploy.backends.dclaw_dynamixel import DClawBackend
from deploy.errors import ExitCode, HardwareFault
from deploy.log import LogReader
from deploy.run import Args, run
from robots import make_task
from robots.dclaw.spec import DEFAULT_POSE, SERVO_IDS
from tests.deploy.conftest import all_torque_off


def dclaw_args(policy, emu, log=None, **overrides) -> Args:
    base = dict(policy=policy, backend="dclaw", port=emu.path, log=log, episode_steps=12, control_dt=0.05,
                reset_speed=3.0, reset_timeout=3.0, rt_priority=0)
    return Args(**{**base, **overrides})


def test_a_servo_not_in_position_mode_is_refused_at_open(make_policy, emulator, capsys):
    """Register 11 must say position control (3) or extended position (4): a servo left in
    velocity mode (1) would turn a goal position into a runaway. Refused before any torque."""
    emulator.set_operating_mode(22, 1)
    assert run(dclaw_args(make_policy(), emulator)) == ExitCode.HARDWARE_FAULT
    assert "servo 22 (MFJ22) is in operating mode 1, not position control (3)" in capsys.readouterr().err
    assert all(emulator.goal_history(i) == [] for i in SERVO_IDS) and all_torque_off(emulator)
    emulator.set_operating_mode(22, dxl.OPERATING_MODE_EXTENDED_POSITION)  # accepted
    backend = DClawBackend(make_task("dclaw-turn"), emulator.path, control_dt=0.05)
    backend.open()
    try:
        assert emulator.torque(22)
    finally:
        backend.close()
    assert all_torque_off(emulator)


def test_reset_times_out_when_a_finger_is_blocked(make_policy, emulator, tmp_path, capsys):
    """A finger held away from the default pose (an obstacle): the reset gives up after
    reset_timeout naming the joint and its error, nothing runs, the torque goes off."""
    emulator.set_position(21, DEFAULT_POSE[4] + 0.6)
    emulator.block(21)
    log = tmp_path / "blocked.h5"
    assert run(dclaw_args(make_policy(), emulator, log, reset_timeout=0.5)) == ExitCode.HARDWARE_FAULT
    err = capsys.readouterr().err
    assert "reset: the default pose was not reached within 0.5 s (MFJ21 off by 0.6" in err
    assert "is a finger blocked" in err
    assert all_torque_off(emulator)
    assert not log.exists()  # the log is created after the first reset: no episode ran
    others = [i for i in SERVO_IDS if i != 21]
    assert np.abs([emulator.position(i) - DEFAULT_POSE[SERVO_IDS.index(i)] for i in others]).max() < 0.08


@pytest.mark.parametrize("lost", [2, 3])
def test_opening_the_bus_tries_each_ping_three_times(lost, emulator):
    """Two lost ping replies of one servo while opening (not time-critical) still open the bus;
    a servo that answers none of the three pings is reported missing."""
    emulator.drop_replies(21, lost)
    backend = DClawBackend(make_task("dclaw-turn"), emulator.path, control_dt=0.05)
    try:
        if lost < 3:
            backend.open()
            assert backend._torque_on
        else:
            with pytest.raises(HardwareFault, match=r"servos 21 \(MFJ21\) do not answer"):
                backend.open()
    finally:
        backend.close()
    assert emulator.dropped_replies(21) == lost


@pytest.mark.parametrize("lost", [1, 2])
def test_a_lost_status_packet_is_retried_once(lost, make_policy, emulator, tmp_path, capsys):
    """One status packet lost mid-episode (line noise): the sync read is retried and the run
    completes with every step logged. Losing the retry's answer too is a hardware fault."""
    log = tmp_path / "noisy.h5"
    emulator.at_goal_write(6, lambda: emulator.drop_replies(21, lost))
    code = run(dclaw_args(make_policy(), emulator, log))
    assert emulator.dropped_replies(21) == lost
    with LogReader(log) as reader:
        episode = reader.episode(0)
    if lost == 1:
        assert code == ExitCode.OK
        assert episode.steps == 12 and episode.outcome["status"] == 0
    else:
        assert code == ExitCode.HARDWARE_FAULT
        assert "servo 21 (MFJ21) did not answer the sync read ([TxRxResult] There is no status packet!) after 2 " \
               "attempts" in capsys.readouterr().err
        assert episode.outcome["status"] == ExitCode.HARDWARE_FAULT and episode.steps < 12
    assert all_torque_off(emulator)


def test_a_hardware_fault_raised_by_a_read_names_the_servo(emulator):
    """Below the runner: the backend raises HardwareFault itself, and close() after it still
    turns every servo's torque off (what deploy.run's finally relies on)."""
    backend = DClawBackend(make_task("dclaw-turn"), emulator.path, control_dt=0.05)
    backend.open()
    try:
        backend.read()
        emulator.silence(32)
        with pytest.raises(HardwareFault, match=r"servo 32 \(THJ32\) did not answer the sync read"):
            backend.read()
    finally:
        backend.close()
    assert all_torque_off(emulator) and backend.torque_off_unconfirmed == [32]
