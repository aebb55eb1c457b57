"""C51 projection and the critic target."""

import pytest
import torch

from toolkit.pql.v_learner import project_distribution

SUPPORT = torch.linspace(-10.0, 10.0, 51)  # atoms 0.4 apart


def _reference_projection(probs, reward, discount, support):
    """Slow per-sample, per-atom C51 projection (Bellemare et al. 2017, Algorithm 1)."""
    v_min, v_max, k = support[0].item(), support[-1].item(), len(support)
    delta = (v_max - v_min) / (k - 1)
    out = torch.zeros_like(probs)
    for i in range(probs.shape[0]):
        for j in range(k):
            tz = min(max(reward[i].item() + discount[i].item() * support[j].item(), v_min), v_max)
            b = (tz - v_min) / delta
            lo, hi = int(b // 1), int(-(-b // 1))
            if lo == hi:
                out[i, lo] += probs[i, j]
            else:
                out[i, lo] += probs[i, j] * (hi - b)
                out[i, hi] += probs[i, j] * (b - lo)
    return out


def test_identity_when_reward_zero_and_discount_one():
    probs = torch.softmax(torch.randn(4, 51), -1)
    out = project_distribution(probs, torch.zeros(4), torch.ones(4), SUPPORT)
    torch.testing.assert_close(out, probs)


def test_shift_by_one_atom_moves_mass_exactly():
    probs = torch.zeros(1, 51)
    probs[0, 10] = 1.0
    out = project_distribution(probs, torch.tensor([0.4]), torch.ones(1), SUPPORT)
    assert out[0, 11].item() == pytest.approx(1.0)


def test_terminal_collapses_onto_the_reward():
    probs = torch.softmax(torch.randn(1, 51), -1)
    out = project_distribution(probs, torch.tensor([1.0]), torch.zeros(1), SUPPORT)
    # r = 1.0 lies between atoms 27 (0.8) and 28 (1.2): half and half.
    assert out[0, 27].item() == pytest.approx(0.5, abs=1e-5)
    assert out[0, 28].item() == pytest.approx(0.5, abs=1e-5)


def test_matches_reference_and_preserves_mass():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(16, 51) * 2, -1)
    reward = torch.randn(16) * 4
    discount = torch.rand(16) * (torch.rand(16) > 0.2)
    out = project_distribution(probs, reward, discount, SUPPORT)
    torch.testing.assert_close(out, _reference_projection(probs, reward, discount, SUPPORT), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.sum(-1), torch.ones(16))


def test_out_of_range_mass_is_clipped_to_the_edges():
    probs = torch.softmax(torch.randn(2, 51), -1)
    out = project_distribution(probs, torch.tensor([50.0, -50.0]), torch.ones(2), SUPPORT)
    assert out[0, -1].item() == pytest.approx(1.0, abs=1e-5)
    assert out[1, 0].item() == pytest.approx(1.0, abs=1e-5)
