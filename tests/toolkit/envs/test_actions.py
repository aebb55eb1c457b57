"""The relative-joint-position action mapping (toolkit.contract.robot.relative_joint_target) that the
VecEnv and the deployment runner share: never leaves the joint limits, same in numpy and torch."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from toolkit.contract.robot import relative_joint_target

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
