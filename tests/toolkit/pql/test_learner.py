"""The learners' update path: the opt-in speed-ups (torch.compile, bf16 autocast) against the
plain path on the same data, and the loss readback that replaces a host sync per update."""

import math

import pytest
import torch

from toolkit.config import PQLConfig
from toolkit.nn import DoubleQCritic
from toolkit.pql.learner import loss_readback_interval
from toolkit.pql.p_learner import PLearner
from toolkit.pql.roles import Dims, NonFiniteLossError, make_critic, make_shared_state
from toolkit.pql.shared import Counter, module_tensors
from toolkit.pql.v_learner import VLearner

DIMS = Dims(obs=30, critic_obs=30, action=9, asymmetric=False)


def _learner(kind, **changes):
    """A learner on a full ring of fixed random transitions and a fixed published critic."""
    cfg = PQLConfig(actor_hidden=(32, 32), critic_hidden=(32, 32), batch_size=64, replay_size=512, **changes)
    shared = make_shared_state(cfg, DIMS, share=False)
    data = torch.Generator().manual_seed(0)
    for name in shared.replay.fields():
        field = getattr(shared.replay, name)
        field.copy_(torch.randn(field.shape, generator=data))
    shared.counters[Counter.REPLAY_SIZE] = 512
    torch.manual_seed(1)
    critic: DoubleQCritic = make_critic(cfg, DIMS)
    shared.critic_board.publish(module_tensors(critic))
    torch.manual_seed(2)
    return kind(cfg, DIMS, shared, seed=3), shared


def _updates(learner, n):
    losses = []
    for _ in range(n):
        learner.work()
        losses.append(learner.last_loss)
    return losses


def test_compiled_update_equals_the_plain_update():
    plain, _ = _learner(PLearner)
    compiled, _ = _learner(PLearner, compile=True)
    expected, got = _updates(plain, 4), _updates(compiled, 4)
    assert all(math.isfinite(v) and v != 0.0 for v in expected)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    for a, b in zip(plain.actor.parameters(), compiled.actor.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_update_tracks_the_plain_update_and_keeps_float32_weights():
    # No target-policy noise: both paths then compute the same targets from the same batches.
    plain, _ = _learner(VLearner, target_noise_std=0.0)
    bf16, _ = _learner(VLearner, target_noise_std=0.0, bf16=True)
    expected, got = _updates(plain, 4), _updates(bf16, 4)
    assert got == pytest.approx(expected, rel=3e-2)  # bf16 keeps ~3 significant digits
    assert got != expected  # it did compute in bf16
    assert {p.dtype for p in bf16.critic.parameters()} == {torch.float32}
    deltas = [float((a - b).detach().abs().max()) for a, b in zip(plain.critic.parameters(), bf16.critic.parameters(),
                                                          strict=True)]
    assert max(deltas) < 5e-3


def test_the_loss_is_read_back_every_n_updates_and_checked_then():
    learner, shared = _learner(VLearner, loss_readback_updates=5)
    _updates(learner, 4)
    assert math.isnan(float(shared.losses[learner.loss_slot]))  # not yet read back: no host copy per update
    learner.work()
    assert math.isfinite(float(shared.losses[learner.loss_slot])) and learner.updates == 5
    assert int(shared.counters[Counter.V_UPDATES]) == 5

    with torch.no_grad():
        next(learner.critic.parameters()).fill_(float("nan"))
    learner.work()  # update 6: diverged, but not yet read back...
    with pytest.raises(NonFiniteLossError, match="critic"):
        learner.checked_state_dict()  # ...and a checkpoint refuses it


def test_readback_interval_defaults():
    assert loss_readback_interval(PQLConfig(), torch.device("cpu")) == 1
    assert loss_readback_interval(PQLConfig(), torch.device("cuda")) == 100
    assert loss_readback_interval(PQLConfig(loss_readback_updates=7), torch.device("cuda")) == 7
    with pytest.raises(ValueError, match="loss_readback_updates"):
        loss_readback_interval(PQLConfig(loss_readback_updates=-1), torch.device("cpu"))
