"""The D'Claw hardware backend through the real dynamixel_sdk, against the Protocol 2.0 emulator
on a pty: a full logged episode, then every injected fault ending safely (right exit status,
torque off on every servo, the log's episode outcome recorded)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from deploy import dynamixel_protocol as dxl
from deploy.errors import ExitCode
from deploy.log import LogReader
from deploy.run import Args, run
from robots.dclaw.spec import DEFAULT_POSE, SERVO_IDS, VALVE_SERVO_ID
from tests.deploy.conftest import REPO, all_torque_off, assert_finite_rows


def dclaw_args(policy, emu, log=None, **overrides) -> Args:
    base = dict(policy=policy, backend="dclaw", port=emu.path, log=log, episode_steps=12, reset_speed=3.0,
                reset_timeout=3.0, rt_priority=0)
    return Args(**{**base, **overrides})


def test_full_episode_on_the_emulated_bus(exported_policy, emulator, tmp_path, capsys):
    log = tmp_path / "hw.h5"
    assert run(dclaw_args(exported_policy, emulator, log, goal=1.0)) == ExitCode.OK
    out = capsys.readouterr().out
    assert "episode 0: success no" in out and "deadline misses 0" in out
    assert all_torque_off(emulator)  # torque off on exit
    with LogReader(log) as reader:
        assert reader.attrs["backend"] == "dclaw"
        episode = reader.episode(0)
    assert episode.steps == 12 and episode.outcome["status"] == 0 and len(episode["reward"]) == 12
    assert_finite_rows(episode.data)
    # The valve servo is a sensor: its angle is read (to a tick), its torque never enabled.
    np.testing.assert_allclose(episode["readings/valve_angle"], 0.5, atol=dxl.RAD_PER_TICK)
    np.testing.assert_allclose(episode["task_state/goal_angle"], 1.0)
    assert emulator.goal_history(VALVE_SERVO_ID) == []
    # Byte-level check of the command path: the last goals on the bus are the logged targets.
    for j, servo_id in enumerate(SERVO_IDS):
        assert emulator.goal_history(servo_id)[-1] == dxl.rad_to_ticks(episode["joint_targets"][-1, j])
    # The fingers followed the commands (first-order motor model, tens of ms).
    np.testing.assert_allclose(episode["joint_pos"][1:], episode["joint_targets"][:-1], atol=0.06)


@pytest.mark.parametrize("fault, message", [
    ("no-reply", "servo 21 (MFJ21) did not answer"),
    ("bad-crc", "servo 21 (MFJ21) did not answer the sync read ([TxRxResult] Incorrect status packet!)"),
    ("hardware-error", "servo 21 (MFJ21) reports hardware error 0x20 (overload)"),
    ("frozen", "servos 21 (MFJ21) report an unchanged realtime tick"),
])
def test_injected_fault_stops_safely(fault, message, make_policy, emulator, tmp_path, capsys):
    log = tmp_path / "fault.h5"
    emulator.inject(fault, 21, after_writes=8)  # open + reset write 2 goals: ~6 steps in
    code = run(dclaw_args(make_policy(), emulator, log, episode_steps=60, control_dt=0.05))
    assert code == ExitCode.HARDWARE_FAULT
    assert message in capsys.readouterr().err
    assert all_torque_off(emulator)  # the silent servo too: the broadcast torque-off reaches it
    with LogReader(log) as reader:
        episode = reader.episode(0)
    assert episode.outcome["status"] == ExitCode.HARDWARE_FAULT and message in episode.outcome["message"]
    assert 3 <= episode.steps < 60
    assert_finite_rows(episode.data)


def test_unplugged_adapter_is_a_hardware_fault(make_policy, emulator, capsys):
    emulator.inject("unplug", after_writes=5)
    code = run(dclaw_args(make_policy(), emulator, episode_steps=60, control_dt=0.05))
    assert code == ExitCode.HARDWARE_FAULT
    assert "lost the serial port" in capsys.readouterr().err


def test_missing_port_and_silent_servo_fail_before_any_motion(make_policy, emulator, tmp_path, capsys):
    assert run(dclaw_args(make_policy(), emulator, port=str(tmp_path / "ttyUSB9"))) == ExitCode.HARDWARE_FAULT
    assert "does not exist" in capsys.readouterr().err
    emulator.silence(31)
    assert run(dclaw_args(make_policy(), emulator)) == ExitCode.HARDWARE_FAULT
    assert "servos 31 (THJ31) do not answer" in capsys.readouterr().err
    assert all(emulator.goal_history(i) == [] for i in SERVO_IDS) and all_torque_off(emulator)


def test_servo_in_error_at_start_is_refused(make_policy, emulator, capsys):
    emulator.hardware_error(12, bits=1 << 2)
    assert run(dclaw_args(make_policy(), emulator)) == ExitCode.HARDWARE_FAULT
    assert "servo 12 (FFJ12) reports hardware error 0x04 (overheating)" in capsys.readouterr().err
    assert all_torque_off(emulator)


def test_mismatching_policy_is_refused_before_the_bus_is_touched(make_policy, emulator, capsys):
    names = tuple(reversed(SERVO_IDS and ("FFJ10", "FFJ11", "FFJ12", "MFJ20", "MFJ21", "MFJ22", "THJ30", "THJ31",
                                          "THJ32")))
    policy = make_policy(metadata={"joint_names": names})
    assert run(dclaw_args(policy, emulator)) == ExitCode.POLICY_MISMATCH
    assert "joint names" in capsys.readouterr().err
    assert emulator.packets == 0


@pytest.mark.parametrize("during", ["reset", "episode"])
def test_ctrl_c_turns_the_torque_off(during, make_policy, emulator, tmp_path):
    log = tmp_path / "interrupted.h5"
    if during == "reset":  # fingers away from the default pose: a long, slow reset move
        for servo_id in SERVO_IDS:
            emulator.set_position(servo_id, 0.0)
    emulator.at_goal_write(6, lambda: os.kill(os.getpid(), signal.SIGINT))
    code = run(dclaw_args(make_policy(), emulator, log, episode_steps=100, control_dt=0.05, reset_speed=0.5))
    assert code == ExitCode.INTERRUPTED
    assert all_torque_off(emulator)
    assert log.exists() == (during == "episode")  # the log is created after the first reset
    if during == "episode":
        with LogReader(log) as reader:
            episode = reader.episode(0)
        assert episode.outcome["status"] == ExitCode.INTERRUPTED and episode.steps >= 2


def test_reset_moves_slowly_to_the_default_pose(make_policy, emulator):
    from deploy.backends.dclaw_dynamixel import DClawBackend
    from robots import make_task

    start = np.zeros(9)
    for servo_id in SERVO_IDS:
        emulator.set_position(servo_id, 0.0)
    backend = DClawBackend(make_task("dclaw-turn"), emulator.path, control_dt=0.05, reset_speed=2.0)
    backend.open()
    try:
        backend.reset(np.random.default_rng(0))
        goals = np.array([emulator.goal_history(i) for i in SERVO_IDS]).T  # (writes, joints)
        steps = np.abs(np.diff(dxl.ticks_to_rad(goals), axis=0))
        assert steps.max() <= 2.0 * 0.05 + dxl.RAD_PER_TICK  # ramp: at most reset_speed * dt per command
        assert np.abs(np.array([emulator.position(i) for i in SERVO_IDS]) - DEFAULT_POSE).max() < 0.08
        assert np.abs(dxl.ticks_to_rad(goals[0]) - start).max() < 1e-3  # torque came on at the present pose
    finally:
        backend.close()
    assert all_torque_off(emulator)


def test_emulator_command_line_for_dry_runs(make_policy):
    """`python -m deploy.dynamixel_emulator` prints its pty; the hardware backend runs against it."""
    proc = subprocess.Popen([sys.executable, "-m", "deploy.dynamixel_emulator"], cwd=REPO, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        port = proc.stdout.readline().strip()
        assert port.startswith("/dev/"), proc.stderr.read()
        assert run(Args(policy=make_policy(), backend="dclaw", port=port, episode_steps=5, control_dt=0.05,
                        reset_speed=3.0, rt_priority=0)) == ExitCode.OK
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    assert proc.returncode == 0
