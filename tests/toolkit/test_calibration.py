"""The calibration contract: its file, its checks, its latency line, and how the training env applies it."""

from __future__ import annotations

import dataclasses

import mujoco
import numpy as np
import pytest
import torch
import yaml

from robots import make_task
from toolkit.config import EnvConfig
from toolkit.contract.calibration import (
    Calibration,
    CalibrationError,
    LatencyLine,
    calibration_targets,
    delayed_commands,
    load_calibration,
)
from toolkit.contract.model_fields import SingleModelFields
from toolkit.envs.vec_env import VecEnv


def dclaw_calibration(**values) -> Calibration:
    task = make_task("dclaw-turn")
    return Calibration.nominal("dclaw", "dclaw-turn", task.robot.joint_names, **values)


HIDDEN = dict(joint_offsets=np.linspace(-0.04, 0.04, 9), joint_damping_scale=np.linspace(0.5, 2.0, 9),
              actuator_gain_scale=np.linspace(0.7, 1.3, 9), friction_loss_scale=1.5, object_friction_scale=0.6,
              action_latency=2)


@pytest.mark.parametrize("latency", [0, 1, 3])
def test_the_latency_line_delays_like_delayed_commands_and_resets_per_env(latency):
    rng = np.random.default_rng(latency)
    commands, reset = rng.normal(size=(8, 3, 2)), rng.normal(size=(3, 2))
    line = LatencyLine(latency, reset)
    line.reset(reset)
    acted = np.stack([line.push(commands[k]).copy() for k in range(8)])
    for env in range(3):
        np.testing.assert_array_equal(acted[:, env], delayed_commands(commands[:, env], reset[env], latency))
    # torch, and a reset of env 1 alone mid-episode: it holds its new reset targets for `latency` steps.
    line = LatencyLine(latency, torch.zeros(3, 2, dtype=torch.float64))
    line.reset(torch.zeros(3, 2, dtype=torch.float64))
    for k in range(4):
        line.push(torch.full((3, 2), float(k), dtype=torch.float64))
    line.reset(torch.full((1, 2), -7.0, dtype=torch.float64), torch.tensor([1]))
    out = [line.push(torch.full((3, 2), 10.0 + k, dtype=torch.float64)).clone() for k in range(latency + 1)]

    def sent(step: int) -> float:  # the command pushed at global step `step`
        return float(step) if step < 4 else 10.0 + step - 4

    for k in range(latency + 1):
        assert out[k][0, 0] == sent(4 + k - latency)  # env 0 goes on with its own delayed commands
        assert out[k][1].tolist() == ([-7.0, -7.0] if k < latency else [10.0, 10.0])


def test_the_file_round_trips_describes_itself_and_refuses_edits_other_robots_and_bad_values(tmp_path):
    calibration = dclaw_calibration(**HIDDEN, fit={"seed": 3, "logs": [{"file": "real.h5", "episodes": [0, 2]}]})
    path = calibration.save(tmp_path / "calib.yaml")
    loaded = load_calibration(path)
    assert loaded.content_hash() == calibration.content_hash() and loaded.values() == calibration.values()
    assert loaded.fit["logs"][0]["episodes"] == [0, 2]
    data = yaml.safe_load(path.read_text())
    assert data["robot"] == "dclaw" and data["task"] == "dclaw-turn" and data["parameters"]["action_latency"] == 2
    assert data["parameters"]["joint_damping_scale"]["FFJ10"] == pytest.approx(0.5)
    data["parameters"]["actuator_gain_scale"]["MFJ21"] = 9.0  # edited by hand after the fit
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CalibrationError, match="hash .* does not match its values"):
        load_calibration(path)
    with pytest.raises(CalibrationError, match="task 'dclaw-turn'.*this run is robot 'dclaw', task 'dclaw-pose'"):
        calibration.check_for("dclaw", "dclaw-pose")
    with pytest.raises(CalibrationError, match="joints"):
        calibration.check_for("dclaw", "dclaw-turn", [f"J{i}" for i in range(9)])
    with pytest.raises(CalibrationError, match="joint_damping_scale' must be positive"):
        dclaw_calibration(joint_damping_scale=np.zeros(9))
    with pytest.raises(CalibrationError, match="action_latency"):
        dclaw_calibration(action_latency=1.5)
    with pytest.raises(CalibrationError, match="does not exist"):
        load_calibration(tmp_path / "missing.yaml")


def test_apply_scales_the_nominal_model_and_keeps_position_actuators_consistent():
    task = make_task("dclaw-turn")
    nominal = task.build_model()
    task.bind(nominal)
    model = task.build_model()
    task.bind(model)
    calibration = dclaw_calibration(**HIDDEN)
    targets = calibration_targets(model, task)
    calibration.apply(SingleModelFields(model), targets)
    dofs, actuators = list(targets.joint_dofs), list(targets.actuators)
    np.testing.assert_allclose(model.dof_damping[dofs], nominal.dof_damping[dofs] * HIDDEN["joint_damping_scale"])
    np.testing.assert_allclose(model.actuator_gainprm[actuators, 0],
                               nominal.actuator_gainprm[actuators, 0] * HIDDEN["actuator_gain_scale"])
    np.testing.assert_allclose(model.actuator_biasprm[actuators, 1], -model.actuator_gainprm[actuators, 0])
    np.testing.assert_allclose(model.dof_frictionloss[dofs], nominal.dof_frictionloss[dofs] * 1.5)
    valve_dof = int(model.jnt_dofadr[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, "valve")])
    assert targets.object_dofs.tolist() == [valve_dof]
    assert model.dof_damping[valve_dof] == pytest.approx(nominal.dof_damping[valve_dof] * 0.6)


def test_the_training_env_runs_the_fitted_model_with_dr_around_it_and_the_latency(tmp_path):
    calibration = dclaw_calibration(**HIDDEN)
    path = str(calibration.save(tmp_path / "calib.yaml"))
    task = make_task("dclaw-turn")
    config = EnvConfig(task="dclaw-turn", num_envs=3, seed=1)
    plain, fitted = VecEnv(task, config), VecEnv(make_task("dclaw-turn"), dataclasses.replace(config, calibration=path))
    dofs = list(calibration_targets(plain.model, task).joint_dofs)
    damping = fitted.sim.model_field("dof_damping")[:, dofs]
    np.testing.assert_allclose(np.asarray(damping), np.asarray(plain.sim.model_field("dof_damping")[:, dofs])
                               * HIDDEN["joint_damping_scale"])
    # Randomized: DR's scales multiply the fitted values, not the file's nominal ones.
    randomized = VecEnv(make_task("dclaw-turn"), dataclasses.replace(config, calibration=path, randomize=True))
    scale = randomized.dr.values["joint_damping"]
    np.testing.assert_allclose(np.asarray(randomized.sim.model_field("dof_damping")[:, dofs]),
                               np.asarray(damping) * np.asarray(scale), rtol=1e-6)
    # Latency 2: the actuators act on the targets of two steps before (the reset targets at first).
    action = torch.full((3, 9), 0.5, dtype=torch.float64)
    reset_targets = fitted.joint_targets.clone()
    seen, commanded = [], []
    for _ in range(4):
        fitted.step(action)
        commanded.append(fitted.joint_targets.clone())
        seen.append(torch.as_tensor(np.asarray(fitted.sim.ctrl))[:, fitted._actuators].to(torch.float64).clone())
    for k in range(2):
        torch.testing.assert_close(seen[k], reset_targets)
    torch.testing.assert_close(seen[2], commanded[0])
    torch.testing.assert_close(seen[3], commanded[1])
    assert not torch.allclose(seen[3], commanded[3])
    with pytest.raises(CalibrationError, match="this run is robot 'dclaw', task 'dclaw-pose'"):
        VecEnv(make_task("dclaw-pose"), EnvConfig(task="dclaw-pose", num_envs=2, calibration=path))
