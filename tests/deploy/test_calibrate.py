"""deploy.calibrate and the places a calibration is used: recovery of hidden parameters, the
self-describing file and plot, refusals of bad input, the emulated D'Claw end to end, offsets
and direction signs in the hardware backend, and the fitted sim in deploy.run and replay."""

from __future__ import annotations

import json
import time

import h5py
import numpy as np
import pytest
import yaml

from benchmarks.calibration_recovery import Args as RecoveryArgs
from benchmarks.calibration_recovery import run as recovery
from deploy import dynamixel_protocol as dxl
from deploy.backends.dclaw_dynamixel import DClawBackend
from deploy.backends.sim import SimBackend
from deploy.calibrate import (
    EpisodeData,
    ParameterSpace,
    excitation_targets,
    fit,
    latency_candidates,
    load_episodes,
    simulate_episodes,
    write_log,
)
from deploy.calibrate import main as calibrate
from deploy.log import LogReader
from deploy.policy import load_policy
from deploy.replay import replay_actions
from deploy.run import Args, run
from deploy.runner import Runner, RunnerConfig
from robots import make_task
from robots.dclaw.spec import SERVO_IDS
from toolkit.contract.calibration import Calibration, load_calibration


def hardware_log(path, hidden: Calibration | None = None, steps: int = 30, seed: int = 0, **change):
    """A "hardware" log of the scripted excitation on a robot with ``hidden`` parameters."""
    task = make_task("dclaw-turn")
    hidden = hidden or Calibration.nominal("dclaw", "dclaw-turn", task.robot.joint_names)
    pose = task.robot.default_pose
    start = EpisodeData("excitation", str(path), 0, {"joint_pos": pose[None], "valve_angle": np.zeros((1, 1))},
                        excitation_targets(task, steps=steps, seed=seed), pose.copy(), {"goal_angle": np.zeros(1)})
    logged = simulate_episodes(task, [start], task.robot.control_dt, hidden)
    for key, value in change.items():
        setattr(logged[0], key, value)
    return write_log(path, task, logged, task.robot.control_dt, overwrite=True)


def damped(factor: float, latency: int = 0) -> Calibration:
    task = make_task("dclaw-turn")
    return Calibration.nominal("dclaw", "dclaw-turn", task.robot.joint_names,
                               joint_damping_scale=np.full(9, factor), action_latency=latency)


ONLY_DAMPING = ["--no-fit-offsets", "--no-fit-gain", "--no-fit-friction-loss", "--no-fit-object-friction",
                "--shared-scales"]


def test_hidden_damping_offsets_and_latency_are_recovered_from_a_deploy_sim_log():
    """The CI size of benchmarks.calibration_recovery: the same goals on fewer parameters."""
    out = recovery(RecoveryArgs(quick=True))
    assert out["latency_fitted"] == out["latency_hidden"] == 1
    assert out["max_scale_rel_error"] <= 0.15, out["scale_rel_errors"]
    assert out["max_offset_abs_error"] <= 0.01, out["offset_abs_errors"]
    assert out["divergence_ratio"] >= 5 and all(out["met"].values())


def test_the_cli_writes_a_self_describing_file_and_plot(tmp_path, capsys):
    log = hardware_log(tmp_path / "real.h5", damped(2.0, latency=1))
    out, plot = tmp_path / "calib.yaml", tmp_path / "calib.png"
    assert calibrate([str(log), "--out", str(out), "--plot", str(plot), "--generations", "12", "--seed", "5",
                      *ONLY_DAMPING]) == 0
    printed = capsys.readouterr()
    assert "generations" in printed.err + printed.out and "divergence ratio" in printed.out
    data = yaml.safe_load(out.read_text())
    assert (data["robot"], data["task"]) == ("dclaw", "dclaw-turn")
    fit_record = data["fit"]
    assert fit_record["logs"] == [{"file": str(log), "episodes": [0]}] and fit_record["seed"] == 5
    assert set(fit_record["divergence_before"]) == {*make_task("dclaw-turn").robot.joint_names, "valve_angle", "total"}
    assert fit_record["divergence_after"]["total"] < fit_record["divergence_before"]["total"] / 5
    assert fit_record["optimiser"]["library"] == "cmaes" and fit_record["toolkit_version"]
    calibration = load_calibration(out)
    assert calibration.action_latency == 1
    assert calibration.joint_damping_scale == pytest.approx(np.full(9, 2.0), rel=0.15)
    assert plot.stat().st_size > 20_000 and plot.read_bytes()[:4] == b"\x89PNG"


def test_a_fit_that_does_not_improve_writes_nothing_unless_forced(tmp_path, capsys):
    log = hardware_log(tmp_path / "nominal.h5", steps=20)  # the sim already matches exactly
    out = tmp_path / "calib.yaml"
    args = [str(log), "--out", str(out), "--generations", "3", *ONLY_DAMPING]
    assert calibrate(args) == 1 and not out.exists()
    assert "did not improve the divergence" in capsys.readouterr().err
    assert calibrate([*args, "--force"]) == 0 and out.exists()


def test_the_polish_recovers_per_joint_scales_and_friction_loss_that_cma_es_alone_leaves_off(tmp_path):
    task = make_task("dclaw-turn")
    names = task.robot.joint_names
    hidden = Calibration.nominal("dclaw", "dclaw-turn", names, joint_damping_scale=np.linspace(1.4, 2.6, 9),
                                 friction_loss_scale=1.3)
    log = hardware_log(tmp_path / "per_joint.h5", hidden, steps=40)
    _, dt, episodes = load_episodes([log])
    space = ParameterSpace.for_task(task, ["damping", "friction_loss"])
    no_latency = latency_candidates(task, False, None)
    searched = fit(task, episodes, dt, space, no_latency, generations=10, polish_iterations=0)
    polished = fit(task, episodes, dt, space, no_latency, generations=10, polish_iterations=10)
    assert polished.polish_iterations > 0 and searched.polish_iterations == 0
    assert polished.divergence_after["total"] < searched.divergence_after["total"] / 10
    assert polished.calibration.joint_damping_scale == pytest.approx(hidden.joint_damping_scale, rel=0.02)
    assert polished.calibration.friction_loss_scale == pytest.approx(1.3, rel=0.05)
    assert polished.calibration.fit["polish"]["iterations"] == polished.polish_iterations
    assert [h["stage"] for h in polished.history][-1] == "polish"


def test_values_at_a_bound_are_flagged(tmp_path):
    task = make_task("dclaw-turn")
    log = hardware_log(tmp_path / "stiff.h5", damped(20.0))  # far above the widened DR range
    _, dt, episodes = load_episodes([log])
    space = ParameterSpace.for_task(task, ["damping"], shared=True)
    result = fit(task, episodes, dt, space, latency_candidates(task, False, None), generations=10)
    assert "damping (all joints)" in result.at_bounds
    assert result.calibration.fit["at_bounds"] == result.at_bounds


def test_bad_logs_are_refused_naming_the_episode(tmp_path, capsys):
    out = tmp_path / "calib.yaml"
    good = hardware_log(tmp_path / "good.h5")
    assert calibrate([str(good), "--task", "dclaw-pose", "--out", str(out)]) == 2
    assert "is a log of robot 'dclaw', task 'dclaw-turn', but the calibration is for robot 'dclaw', task " \
           "'dclaw-pose'" in capsys.readouterr().err
    short = hardware_log(tmp_path / "short.h5", steps=6)
    assert calibrate([str(short), "--out", str(out)]) == 2
    assert f"{short} episode 0 has 6 step(s); calibration needs at least 10" in capsys.readouterr().err
    bad = hardware_log(tmp_path / "nan.h5")
    with h5py.File(bad, "a") as f:
        f["episodes/0/readings/joint_pos"][4, 2] = np.nan
    assert calibrate([str(bad), "--out", str(out)]) == 2
    assert f"{bad} episode 0: readings/joint_pos has NaN/inf at step(s) [4]" in capsys.readouterr().err
    blind = hardware_log(tmp_path / "no_targets.h5")
    with h5py.File(blind, "a") as f:  # as a log written without that field
        del f["episodes/0/joint_targets"]
        f.attrs["step_datasets"] = json.dumps([n for n in json.loads(f.attrs["step_datasets"]) if n != "joint_targets"])
    assert calibrate([str(blind), "--out", str(out)]) == 2
    assert "episode 0 has no joint_targets" in capsys.readouterr().err
    assert not out.exists()


def test_the_hardware_backend_applies_offsets_and_signs_and_round_trips_ticks_exactly(emulator):
    offsets = np.linspace(-0.07, 0.05, 9)
    signs = np.array([1, -1, 1, 1, 1, -1, 1, 1, -1])
    backend = DClawBackend(make_task("dclaw-turn"), emulator.path, control_dt=0.05, joint_offsets=offsets,
                           joint_signs=signs)
    backend.open()
    try:
        ticks = {servo: 2048 + 37 * (i - 4) + 300 for i, servo in enumerate(SERVO_IDS)}
        for servo, value in ticks.items():
            emulator.block(servo)  # held where it is put
            emulator.set_position(servo, (value - dxl.CENTER_TICKS) * dxl.RAD_PER_TICK)
        readings, _ = backend.read()
        expected = signs * (np.array(list(ticks.values())) - dxl.CENTER_TICKS) * dxl.RAD_PER_TICK - offsets
        np.testing.assert_allclose(readings["joint_pos"][0], expected, atol=1e-12)
        writes = emulator.goal_writes
        backend.write(readings["joint_pos"][0])  # the reading sent back as a goal: the same ticks
        deadline = time.monotonic() + 5.0
        while emulator.goal_writes == writes and time.monotonic() < deadline:  # a broadcast: no reply to wait for
            time.sleep(0.005)
        assert [emulator.goal_history(servo)[-1] for servo in SERVO_IDS] == list(ticks.values())
    finally:
        backend.close()
    assert backend.info()["joint_offsets"] == pytest.approx(offsets.tolist())


def test_a_log_of_the_emulated_dclaw_calibrates_end_to_end(make_policy, emulator, tmp_path, capsys):
    log, out = tmp_path / "emulated.h5", tmp_path / "calib.yaml"
    args = Args(policy=make_policy(), backend="dclaw", port=emulator.path, log=log, episode_steps=14,
                control_dt=0.05, reset_speed=3.0, reset_timeout=3.0, rt_priority=0, max_overruns=1_000_000)
    assert run(args) == 0
    capsys.readouterr()
    # The emulator's servos lag with a 50 ms time constant, the nominal MuJoCo servo far less: the
    # fit slows the simulated joints down.
    assert calibrate([str(log), "--out", str(out), "--generations", "10", "--no-fit-offsets", "--shared-scales",
                      "--no-fit-friction-loss", "--no-fit-object-friction"]) == 0, capsys.readouterr().err
    calibration = load_calibration(out)
    fit_record = calibration.fit
    assert fit_record["divergence_after"]["total"] < 0.8 * fit_record["divergence_before"]["total"]
    assert fit_record["logs"][0]["file"] == str(log)


def test_the_fitted_sim_differs_from_the_nominal_one_and_deploy_run_and_replay_use_it(exported_policy, tmp_path,
                                                                                      capsys):
    task = make_task("dclaw-turn")
    slow = Calibration.nominal("dclaw", "dclaw-turn", task.robot.joint_names, actuator_gain_scale=np.full(9, 0.5),
                               joint_damping_scale=np.full(9, 2.0), action_latency=1)
    path = slow.save(tmp_path / "calib.yaml")
    policy = load_policy(exported_policy)

    def joint_positions(calibration):
        backend = SimBackend(make_task("dclaw-turn"), task.robot.control_dt, calibration=calibration)
        backend.open()
        seen = []
        original = backend.read

        def read():
            readings, fresh = original()
            seen.append(readings["joint_pos"][0].copy())
            return readings, fresh

        backend.read = read
        Runner(policy, backend, RunnerConfig(episodes=1, episode_steps=15, realtime=False, rt_priority=0)).run()
        return np.array(seen)

    nominal, fitted = joint_positions(None), joint_positions(slow)
    assert np.allclose(nominal[0], fitted[0])  # the same start
    assert np.abs(nominal - fitted).max() > 0.05  # slower servos, a step late
    # deploy.run --calibration: the fitted sim, logged, and replayed open loop with its latency.
    log = tmp_path / "fitted.h5"
    assert run(Args(policy=exported_policy, backend="sim", calibration=path, log=log, episodes=1,
                    episode_steps=15, realtime=False, rt_priority=0)) == 0
    assert f"calibration {slow.content_hash()}" in capsys.readouterr().out
    with LogReader(log) as reader:
        assert json.loads(reader.attrs["backend_info"])["calibration"]["hash"] == slow.content_hash()
    with LogReader(log) as reader:  # open loop, with the fitted model and its latency: the same steps
        assert replay_actions(reader, reader.episode(0)).max_diff < 1e-9
    other = Calibration.nominal("dclaw", "dclaw-pose", task.robot.joint_names).save(tmp_path / "pose.yaml")
    assert run(Args(policy=exported_policy, backend="sim", calibration=other, episodes=1, realtime=False,
                    rt_priority=0)) == 2
    assert "calibration refused" in capsys.readouterr().err
