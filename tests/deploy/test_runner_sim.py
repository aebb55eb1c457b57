"""The control loop on the MuJoCo sim backend: pacing, safety clamps, refusing mismatching
policies, and every watchdog/NaN stop with its exit status and log outcome."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy.backends.sim import SimBackend
from deploy.errors import ExitCode, NonFiniteError, PolicyMismatchError, StaleSensorData, WatchdogOverrun
from deploy.log import LogReader, LogWriter
from deploy.policy import load_policy
from deploy.run import Args, run
from deploy.runner import Runner, RunnerConfig
from deploy.testing import synthetic_policy, task_metadata
from robots import make_task
from toolkit.contract.obs_layout import ObsLayout


def test_loop_paces_with_absolute_deadlines(make_policy, task, tmp_path):
    """Behaviour, not figures (period and jitter statistics: benchmarks/deploy_jitter.py). No step
    starts before its deadline; each deadline lies exactly one period after the previous one
    (the grid restarts only after a step overran it by more than a whole period); the overrun
    counter counts the steps the log flags; every step reads back from the log."""
    dt, steps = 0.01, 60
    backend = SimBackend(task, dt)
    backend.open()
    path = tmp_path / "paced.h5"
    runner = Runner(load_policy(make_policy()), backend, RunnerConfig(episode_steps=steps, control_dt=dt,
                                                                      max_overruns=steps),
                    log_factory=lambda step, episode: LogWriter(path, 1, step, episode, {}))
    (result,) = runner.run()
    runner.log.close()
    with LogReader(path) as reader:
        episode = reader.episode(0)
    assert result.steps == episode.steps == steps
    lateness = episode["timing/lateness"]
    np.testing.assert_array_equal(lateness, result.timing["lateness"])
    assert np.all(lateness >= 0)  # never early: sleep, then spin to the deadline
    deadlines = episode["time"] - lateness  # seconds since the first deadline
    assert deadlines[0] == 0
    spacing = np.diff(deadlines)
    overran = episode["timing/overrun"].astype(bool)
    on_grid = np.abs(spacing - dt) < 1e-6
    restarted = overran[:-1] & (spacing > 2 * dt - 1e-6)  # a step more than a period late restarts the grid
    assert np.all(on_grid | restarted), spacing[~(on_grid | restarted)]
    assert result.overruns == int(overran.sum())
    np.testing.assert_allclose(episode["timing/period"][1:], np.diff(episode["time"]), atol=1e-9)


class RecordingSim(SimBackend):
    """The real sim backend, remembering every command it was given."""

    def reset(self, rand):
        result = super().reset(rand)
        self.commands = [result.joint_targets.copy()]
        return result

    def write(self, joint_targets):
        self.commands.append(np.array(joint_targets))
        super().write(joint_targets)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(weight_scale=st.floats(0.1, 50.0), bias=st.floats(-20.0, 20.0), seed=st.integers(0, 2**16),
       control_dt=st.sampled_from([0.002, 0.01, 0.05, 0.1]))
def test_commands_never_exceed_limits_or_max_speed(tmp_path, weight_scale, bias, seed, control_dt):
    task = make_task("dclaw-turn")
    path = synthetic_policy(tmp_path / f"p{seed}.onnx", task_metadata(task), weight_scale=weight_scale, bias=bias,
                            seed=seed, hidden=16)
    backend = RecordingSim(task, control_dt)
    backend.open()
    Runner(load_policy(path), backend, RunnerConfig(episode_steps=25, control_dt=control_dt, realtime=False,
                                                    seed=seed)).run()
    robot = task.robot
    commands = np.array(backend.commands)
    assert np.all(commands >= robot.joint_low) and np.all(commands <= robot.joint_high)
    step = np.abs(np.diff(commands, axis=0))
    assert np.all(step <= robot.max_joint_speed * control_dt + 1e-12)


def _edited_export(exported_policy, tmp_path, **props) -> str:
    """The exporter's file with metadata entries replaced (as a file from another robot/version)."""
    model = onnx.load(exported_policy)
    for entry in model.metadata_props:
        if entry.key in props:
            entry.value = props[entry.key]
    path = tmp_path / "edited.onnx"
    onnx.save(model, path)
    return str(path)


_ROBOT = make_task("dclaw-turn").robot
_WIDER_GOAL = ObsLayout(tuple((name, 2 if name == "goal_error" else size)
                              for name, size in make_task("dclaw-turn").obs_layout.fields))
_EIGHT_JOINTS = {"joint_names": _ROBOT.joint_names[:8], "joint_low": _ROBOT.joint_low[:8],
                 "joint_high": _ROBOT.joint_high[:8], "default_pose": _ROBOT.default_pose[:8],
                 "action_scale": _ROBOT.action_scale[:8]}


@pytest.mark.parametrize("change, expected", [
    ({"joint_names": tuple(reversed(_ROBOT.joint_names))}, ["joint names"]),
    ({"obs_layout": ObsLayout((*make_task("dclaw-turn").obs_layout.fields, ("valve_velocity", 1))),
      "schema_hash": ObsLayout((*make_task("dclaw-turn").obs_layout.fields, ("valve_velocity", 1))).schema_hash()},
     ["observation schema hash"]),
    ({"action_scale": np.full(9, 0.3)}, ["action_scale"]),
    ({"control_dt": 0.05}, ["control_dt"]),
    ({"joint_low": _ROBOT.joint_low - 0.1}, ["joint_low: policy"]),
    ({"joint_high": _ROBOT.joint_high + 0.1}, ["joint_high: policy"]),
    ({"default_pose": _ROBOT.default_pose + 0.05}, ["default_pose: policy"]),
    ({"max_joint_speed": 1.0}, ["max_joint_speed: policy 1 vs robot 3"]),
    ({"obs_layout": _WIDER_GOAL, "schema_hash": _WIDER_GOAL.schema_hash()},
     ["observation size: policy 31 vs task 30", "observation layout"]),
    (_EIGHT_JOINTS, ["action size: policy 8 vs robot 9 joints", "joint names"]),
], ids=["joint-names", "obs-schema", "action-scale", "control-dt", "joint-low", "joint-high", "default-pose",
        "max-joint-speed", "obs-size", "action-size"])
def test_mismatching_policy_is_refused(change, expected, make_policy, task, capsys):
    policy = make_policy(metadata=change)
    assert run(Args(policy=policy, episodes=1)) == ExitCode.POLICY_MISMATCH
    err = capsys.readouterr().err
    assert "refusing policy" in err and all(line in err for line in expected), err
    backend = SimBackend(task, 0.1)  # the runner refuses it as well, before its first reset
    with pytest.raises(PolicyMismatchError, match="refusing policy") as refused:
        Runner(load_policy(policy), backend, RunnerConfig(realtime=False))
    assert refused.value.exit_code == ExitCode.POLICY_MISMATCH and backend.model is None


def test_exported_policy_for_another_robot_or_task_is_refused(exported_policy, tmp_path, capsys):
    edited = _edited_export(exported_policy, tmp_path, robot="shadow_hand")
    assert run(Args(policy=edited, backend="dclaw", port="/dev/null")) == ExitCode.POLICY_MISMATCH
    assert "robot: the policy was trained for 'shadow_hand', the backend drives 'dclaw'" in capsys.readouterr().err
    edited = _edited_export(exported_policy, tmp_path, task="dclaw-spin")
    assert run(Args(policy=edited)) == ExitCode.POLICY_MISMATCH
    assert "Did you mean 'dclaw-turn'" in capsys.readouterr().err
    assert run(Args(policy=tmp_path / "missing.onnx")) == ExitCode.POLICY_MISMATCH


class FaultySim(SimBackend):
    """The real sim with one injected defect once ``at`` commands have been applied."""

    def __init__(self, task, control_dt, defect, at):
        super().__init__(task, control_dt)
        self.defect, self.at, self.writes, self.held = defect, at, 0, 0

    def read(self):
        readings, fresh = super().read()
        if self.writes >= self.at and self.defect == "nan":
            readings["valve_angle"] = np.full_like(readings["valve_angle"], np.nan)
        if self.writes >= self.at and self.defect == "stale":
            fresh = False
        return readings, fresh

    def write(self, joint_targets):
        super().write(joint_targets)
        self.writes += 1
        if self.writes > self.at and self.defect == "slow":
            time.sleep(0.03)

    def hold(self):
        self.held += 1


@pytest.mark.parametrize("defect, error, code, steps", [
    ("nan", NonFiniteError, ExitCode.NON_FINITE, 5),
    ("stale", StaleSensorData, ExitCode.HARDWARE_FAULT, 7),
    ("slow", WatchdogOverrun, ExitCode.WATCHDOG_OVERRUN, 8),
])
def test_watchdogs_stop_hold_and_log_the_outcome(defect, error, code, steps, exported_policy, task, tmp_path):
    """A log opened by the runner keeps every step up to the stop and records why it stopped.
    Only the overrun watchdog needs wall-clock pacing; the NaN and stale cases run unpaced."""
    backend = FaultySim(task, 0.02, defect, at=5)
    backend.open()
    path = tmp_path / f"{defect}.h5"
    cfg = RunnerConfig(episode_steps=40, control_dt=0.02, max_overruns=3, max_stale_reads=3,
                       realtime=defect == "slow")
    runner = Runner(load_policy(exported_policy), backend, cfg,
                    log_factory=lambda step, episode: LogWriter(path, 1, step, episode, {}))
    with pytest.raises(error) as raised:
        runner.run()
    runner.log.close()
    assert raised.value.exit_code == code and backend.held >= 1
    with LogReader(path) as reader:
        episode = reader.episode(0)
    if defect == "slow":  # every step from 5 on overruns: stopped at step 7 at the latest, after 3 in a row
        # (an overrun of a loaded machine's making just before may stop it a step or two earlier)
        assert episode.steps <= steps and episode["timing/overrun"][-3:].all()
    else:
        assert episode.steps == steps
    assert episode.outcome["status"] == code and episode.outcome["message"] == str(raised.value)
    if defect == "nan":
        assert "valve_sincos, goal_error" in str(raised.value)
        assert np.isfinite(episode["obs"]).all()  # the NaN observation was never logged as used


class EveryOtherStep(SimBackend):
    """The real sim whose every second read is stale, or every second write overruns the period."""

    def __init__(self, task, control_dt, defect):
        super().__init__(task, control_dt)
        self.defect, self.reads, self.writes = defect, 0, 0

    def reset(self, rand):  # the runner's random source, passed through as it comes
        self.reads = self.writes = 0
        return super().reset(rand)

    def read(self):
        readings, fresh = super().read()
        self.reads += 1
        return readings, fresh and not (self.defect == "stale" and self.reads % 2 == 0)

    def write(self, joint_targets):
        super().write(joint_targets)
        self.writes += 1
        if self.defect == "slow" and self.writes % 2 == 0:
            time.sleep(1.1 * self.control_dt)  # this step overruns; the next one has 0.9 periods to spare


def test_watchdog_counters_reset_on_a_good_step(make_policy, task):
    """The watchdogs count consecutive bad steps: a stale read or an overrun every other step
    never stops a run that allows two in a row, though each one is counted."""
    policy = load_policy(make_policy())
    stale = EveryOtherStep(task, 0.1, "stale")
    stale.open()
    (result,) = Runner(policy, stale, RunnerConfig(episode_steps=20, max_stale_reads=2, realtime=False)).run()
    assert result.steps == 20 and stale.reads == 21
    with pytest.raises(StaleSensorData, match="did not update for 1 consecutive reads"):  # they are stale
        Runner(policy, stale, RunnerConfig(episode_steps=20, max_stale_reads=1, realtime=False)).run()
    slow = EveryOtherStep(task, 0.1, "slow")
    slow.open()
    (result,) = Runner(policy, slow, RunnerConfig(episode_steps=10, max_overruns=2)).run()
    assert result.steps == 10 and result.overruns >= 5  # steps 1, 3, 5, 7, 9 overran


def test_nan_action_stops_with_status_5(make_policy, capsys):
    assert run(Args(policy=make_policy(nan_action=True), episode_steps=5)) == ExitCode.NON_FINITE
    assert "non-finite or misshapen action" in capsys.readouterr().err
