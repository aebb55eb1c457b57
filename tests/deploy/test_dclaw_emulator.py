"""The D'Claw hardware backend through the real dynamixel_sdk, against the Protocol 2.0 emulator
on a pty: a full logged episode, then every injected fault ending safely (right exit status,
torque off on every servo, the log's episode outcome recorded)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from deploy import dynamixel_protocol as dxl
from deploy.dynamixel_emulator import parse_fault
from deploy.errors import ExitCode
from deploy.log import LogReader
from deploy.run import Args, run
from robots.dclaw.spec import DEFAULT_POSE, SERVO_IDS, SPEC, VALVE_SERVO_ID
from tests.deploy.conftest import REPO, all_torque_off, assert_finite_rows
from tests.deploy.helpers import writer_pids
from toolkit.contract.rng import EnvStreams, env_seeds


def runner_rand(seed: int = 0):
    """The random source the runner hands ``backend.reset`` (the per-env stream of one env)."""
    streams = EnvStreams(1)
    streams.seed(env_seeds(seed, 1))
    return streams.rand_for(None)


def dclaw_args(policy, emu, log=None, **overrides) -> Args:
    base = dict(policy=policy, backend="dclaw", port=emu.path, log=log, episode_steps=12, reset_speed=3.0,
                reset_timeout=3.0, rt_priority=0)
    return Args(**{**base, **overrides})


def test_full_episode_on_the_emulated_bus(exported_policy, emulator, tmp_path, capsys):
    log = tmp_path / "hw.h5"
    assert run(dclaw_args(exported_policy, emulator, log, goal=1.0)) == ExitCode.OK
    out = capsys.readouterr().out
    assert "episode 0: success no" in out
    assert all_torque_off(emulator)  # torque off on exit
    with LogReader(log) as reader:
        assert reader.attrs["backend"] == "dclaw"
        episode = reader.episode(0)
    assert episode.steps == 12 and episode.outcome["status"] == 0 and len(episode["reward"]) == 12
    # The deadline misses reported are the steps the log flags as overrun (how many there are
    # depends on the machine's load: benchmarks/deploy_jitter.py measures it).
    misses = int(re.search(r"episode 0: .*\| deadline misses (\d+) \|", out)[1])
    assert misses == int(episode["timing/overrun"].sum())
    assert np.all(episode["timing/lateness"] >= 0)  # never early
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


@pytest.mark.parametrize("start", ["centred", "outside limits"])
def test_reset_moves_slowly_to_the_default_pose(start, emulator):
    """From wherever the fingers are, torque comes on at the present pose and the goals ramp to
    the default pose at reset_speed. A finger found outside its joint limits (here the middle
    joints, below their lower limit, and a base joint beyond its upper one) comes back along the
    ramp too: never a jump to the nearest limit."""
    from deploy.backends.dclaw_dynamixel import DClawBackend
    from robots import make_task

    initial = np.zeros(9)
    if start == "outside limits":
        initial = DEFAULT_POSE.copy()
        initial[[1, 4, 7]] = SPEC.joint_low[[1, 4, 7]] - 0.3
        initial[0] = SPEC.joint_high[0] + 0.3
    for servo_id, angle in zip(SERVO_IDS, initial, strict=True):
        emulator.set_position(servo_id, angle)
    backend = DClawBackend(make_task("dclaw-turn"), emulator.path, control_dt=0.05, reset_speed=2.0)
    backend.open()
    try:
        backend.reset(runner_rand())
        goals = dxl.ticks_to_rad(np.array([emulator.goal_history(i) for i in SERVO_IDS]).T)  # (writes, joints)
        steps = np.abs(np.diff(goals, axis=0))
        assert steps.max() <= 2.0 * 0.05 + dxl.RAD_PER_TICK  # ramp: at most reset_speed * dt per command
        assert np.abs(np.array([emulator.position(i) for i in SERVO_IDS]) - DEFAULT_POSE).max() < 0.08
        assert np.abs(goals[0] - initial).max() < 2 * dxl.RAD_PER_TICK  # torque came on at the present pose
        # Each goal moves monotonically from the start to the default pose.
        direction = np.sign(DEFAULT_POSE - initial)
        assert np.all(np.diff(goals, axis=0) * direction >= -dxl.RAD_PER_TICK)
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


def _kill_the_log_writer() -> None:
    for pid in writer_pids():
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("stop", ["nan", "watchdog", "log"])
def test_every_stop_turns_the_torque_off(stop, make_policy, emulator, tmp_path, capsys):
    """A NaN action, the overrun watchdog (every reply arrives 25 ms late, as through an adapter
    whose latency timer was left at 16+ ms, in a 20 ms period) and a log writer dying mid-run:
    each stops with its own status, and the servos are left without torque."""
    log = tmp_path / f"{stop}.h5"
    policy = make_policy(nan_action=stop == "nan")
    if stop == "watchdog":  # from the first control step on (open and reset wrote 2 goals)
        emulator.at_goal_write(3, lambda: setattr(emulator, "reply_latency", 0.025))
    if stop == "log":
        emulator.at_goal_write(6, _kill_the_log_writer)
    code = run(dclaw_args(policy, emulator, log, episode_steps=200, control_dt=0.02 if stop == "watchdog" else 0.05))
    expected = {"nan": ExitCode.NON_FINITE, "watchdog": ExitCode.WATCHDOG_OVERRUN, "log": ExitCode.LOG_FAILED}[stop]
    assert code == expected
    err = capsys.readouterr().err
    assert {"nan": "non-finite", "watchdog": "consecutive control steps overran their 20.0 ms period",
            "log": "the writer process is gone"}[stop] in err
    assert all_torque_off(emulator)
    with LogReader(log) as reader:
        episode = reader.episode(0)
    if stop == "log":
        assert 1 <= episode.steps < 200 and episode.outcome["status"] == -1  # the writer died first
    else:
        assert episode.outcome["status"] == expected and episode.steps < 200
    if stop == "watchdog":
        assert episode["timing/overrun"][-5:].all()  # max_overruns (5) in a row


def test_a_timed_fault_fires_during_the_run(make_policy, emulator, tmp_path, capsys):
    """`--fault no-reply:21@SECONDS` (parsed as the command line does) silences servo 21 while the
    episode runs: a hardware fault, the episode's outcome logged, torque off on every servo. (The
    timer starts at the reset's goal, so that a slow start-up cannot move the fault into open.)"""
    log = tmp_path / "timed.h5"
    emulator.at_goal_write(2, lambda: emulator.inject(*parse_fault("no-reply:21@0.5")))
    code = run(dclaw_args(make_policy(), emulator, log, episode_steps=200, control_dt=0.05))
    assert code == ExitCode.HARDWARE_FAULT
    assert "servo 21 (MFJ21) did not answer" in capsys.readouterr().err
    assert all(not emulator.torque(i) for i in emulator.servos if i != 21)  # the others confirmed it
    assert all_torque_off(emulator)  # and the silent one obeyed the broadcast
    with LogReader(log) as reader:
        episode = reader.episode(0)
    assert episode.outcome["status"] == ExitCode.HARDWARE_FAULT and episode.steps < 200


def test_emulator_command_line_fault_unplug_at_seconds(make_policy, capsys):
    """`python -m deploy.dynamixel_emulator --fault unplug@1.5` (the help's KIND[@SECONDS] form)
    runs and pulls the bus 1.5 s in: the backend reports the lost port and the emulator exits."""
    proc = subprocess.Popen([sys.executable, "-m", "deploy.dynamixel_emulator", "--fault", "unplug@1.5"], cwd=REPO,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        port = proc.stdout.readline().strip()
        assert port.startswith("/dev/"), proc.stderr.read()
        code = run(Args(policy=make_policy(), backend="dclaw", port=port, episode_steps=200, control_dt=0.05,
                        reset_speed=3.0, rt_priority=0))
        assert code == ExitCode.HARDWARE_FAULT
        err = capsys.readouterr().err  # (on a very slow start-up the port is gone before it is opened)
        assert "lost the serial port" in err or f"serial port {port} does not exist" in err
        proc.wait(timeout=10)  # the unplugged emulator ends by itself
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0
