"""The relative-joint-position action mapping (toolkit.contract.robot.relative_joint_target) that the
VecEnv and the deployment runner share: never leaves the joint limits, same in numpy and torch; and
the deployment safety clamp (clamp_joint_command), whose joint limits always have the last word."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from robots.dclaw.spec import SPEC
from toolkit.contract.robot import clamp_joint_command, relative_joint_target

J = 4
LOW = np.array([-0.5, -1.0, -1.6, 0.0])
HIGH = np.array([0.5, 1.0, 1.6, 0.1])
SCALE = np.array([0.15, 0.3, 1.0, 5.0])

# Anything finite, including far outside [-1, 1] and denormals (NaN is rejected before the mapping).
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
actions = arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 3), st.just(J)), elements=finite)


@settings(max_examples=150, deadline=None)
@given(actions=actions, start=arrays(np.float64, (1, J), elements=st.floats(0, 1)))
def test_targets_stay_in_limits_and_numpy_equals_torch(actions, start):
    steps, n, _ = actions.shape
    target_np = np.broadcast_to(LOW + start * (HIGH - LOW), (n, J)).copy()
    target_t = torch.from_numpy(target_np.copy())
    limits_t = [torch.from_numpy(a) for a in (SCALE, LOW, HIGH)]
    for t in range(steps):
        previous = target_np
        target_np = relative_joint_target(target_np, actions[t], SCALE, LOW, HIGH)
        target_t = relative_joint_target(target_t, torch.from_numpy(actions[t]), *limits_t)
        assert np.all(target_np >= LOW) and np.all(target_np <= HIGH)
        # One step moves a target by at most action_scale, whatever the action's magnitude.
        assert np.all(np.abs(target_np - previous) <= SCALE + 1e-12)
        np.testing.assert_array_equal(target_t.numpy(), target_np)


def test_in_range_action_moves_by_scale_times_action():
    previous = np.zeros((1, J)) + np.array([0.0, 0.0, 0.0, 0.05])
    action = np.array([[0.5, -1.0, 0.2, 0.0]])
    expected = previous + SCALE * action
    np.testing.assert_allclose(relative_joint_target(previous, action, SCALE, LOW, HIGH), expected)
    # Out-of-range actions act like +-1, then the limits clip.
    np.testing.assert_allclose(relative_joint_target(previous, np.full((1, J), 7.0), SCALE, LOW, HIGH),
                               np.minimum(previous + SCALE, HIGH))


def test_clamp_brings_a_previous_command_outside_the_limits_back_inside():
    """The case that used to leave the limits: clipping to the limits first and to previous +- max_step
    second returned 0.75 here."""
    out = clamp_joint_command(np.array([0.0]), np.array([0.9]), -0.48, 0.48, 0.15)
    assert out.tolist() == [0.48]


commands = arrays(np.float64, (3, J), elements=st.floats(-3, 3))


@settings(max_examples=300, deadline=None)
@given(command=commands, previous=commands, dt=st.sampled_from([0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2.0]),
       speed=st.floats(0.1, 10.0))
def test_clamp_always_holds_the_limits_and_the_speed_bound(command, previous, dt, speed):
    """Direct, over previous commands inside and outside the limits and every control period."""
    max_step = speed * dt
    out = clamp_joint_command(command, previous, LOW, HIGH, max_step)
    assert np.all(out >= LOW) and np.all(out <= HIGH)
    inside = (previous >= LOW) & (previous <= HIGH)
    assert np.all(np.abs(out - previous)[inside] <= max_step + 1e-12)
    # Within both bounds, a command passes unchanged.
    free = inside & (command >= LOW) & (command <= HIGH) & (np.abs(command - previous) <= max_step)
    np.testing.assert_array_equal(out[free], command[free])
    torch_out = clamp_joint_command(torch.from_numpy(command), torch.from_numpy(previous), torch.from_numpy(LOW),
                                    torch.from_numpy(HIGH), max_step)
    np.testing.assert_array_equal(torch_out.numpy(), out)


@pytest.mark.parametrize("dt", [0.01, 0.05, 0.1])
def test_the_dclaw_speed_bound_engages_at_short_periods(dt):
    """At 100 Hz the D'Claw's 3 rad/s bound (0.03 rad per step) is tighter than a full action."""
    previous = SPEC.default_pose[None]
    target = relative_joint_target(previous, np.ones((1, SPEC.num_joints)), SPEC.action_scale, SPEC.joint_low,
                                   SPEC.joint_high)
    out = clamp_joint_command(target, previous, SPEC.joint_low, SPEC.joint_high, SPEC.max_joint_speed * dt)
    step = np.abs(out - previous)
    assert np.all(step <= SPEC.max_joint_speed * dt + 1e-12)
    if SPEC.max_joint_speed * dt < SPEC.action_scale.min():
        assert np.all(step[target != previous] < np.abs(target - previous)[target != previous])
