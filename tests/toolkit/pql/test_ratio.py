"""Speed-ratio gates: no deadlock, ratios held, whatever order the roles get to run."""

import random

import pytest
import torch

from toolkit.pql.ratio import RatioGate
from toolkit.pql.shared import NUM_COUNTERS
from toolkit.pql.shared import Counter as C


def _counters(learn_start=0, replay=10_000):
    c = torch.zeros(NUM_COUNTERS, dtype=torch.int64)
    c[C.LEARN_START] = learn_start
    c[C.REPLAY_SIZE] = replay
    return c


@pytest.mark.parametrize("ka,kp", [(8, 2), (1, 1), (3, 5)])
def test_random_scheduling_holds_ratios_without_deadlock(ka, kp):
    gate = RatioGate(ka, kp, slack=2, batch_size=1)
    c = _counters()
    rng = random.Random(0)
    # Each role gets the CPU at random, with very different speeds (weights).
    weights = {"actor": 1.0, "v": 5.0, "p": 0.3}
    for _ in range(20_000):
        role = rng.choices(list(weights), weights=list(weights.values()))[0]
        if role == "actor" and gate.actor_may_step(c, 0, 0):
            c[C.ACTOR_STEPS] += 1
        elif role == "v" and gate.v_may_update(c, 0, 0):
            c[C.V_UPDATES] += 1
        elif role == "p" and gate.p_may_update(c, 0, 0):
            c[C.P_UPDATES] += 1
        movable = [gate.actor_may_step(c, 0, 0), gate.v_may_update(c, 0, 0), gate.p_may_update(c, 0, 0)]
        assert any(movable), f"deadlock at {c.tolist()}"
    measured = gate.measured(c, 0, 0)
    assert int(c[C.P_UPDATES]) > 200  # the slowest role was not starved
    assert measured["critic_per_actor_step"] == pytest.approx(ka, rel=0.1)
    assert measured["critic_per_policy_update"] == pytest.approx(kp, rel=0.1)


def test_learners_wait_for_warmup_and_a_full_batch():
    gate = RatioGate(8, 2, slack=2, batch_size=100)
    c = _counters(learn_start=-1, replay=1000)
    assert gate.actor_may_step(c, 0, 0) and not gate.v_may_update(c, 0, 0) and not gate.p_may_update(c, 0, 0)
    c = _counters(learn_start=5, replay=50)
    assert not gate.v_may_update(c, 0, 0)


def test_actor_waits_when_ahead_and_v_when_ahead():
    gate = RatioGate(8, 2, slack=2, batch_size=1)
    c = _counters()
    c[C.ACTOR_STEPS] = 2  # two actor steps, no critic update yet
    assert not gate.actor_may_step(c, 0, 0) and gate.v_may_update(c, 0, 0)
    c[C.ACTOR_STEPS] = 0
    c[C.V_UPDATES] = 16  # V two actor steps ahead
    c[C.P_UPDATES] = 8
    assert not gate.v_may_update(c, 0, 0) and gate.actor_may_step(c, 0, 0)


def test_rejects_zero_slack():
    with pytest.raises(ValueError, match="deadlock"):
        RatioGate(8, 2, slack=0, batch_size=1)
