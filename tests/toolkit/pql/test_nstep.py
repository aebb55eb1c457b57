"""n-step transitions against a hand computation, including terminations and truncations."""

import pytest
import torch

from toolkit.pql.nstep import NStepWindow

GAMMA = 0.9


def _step(t, reward, terminated, truncated):
    """Env 0's step t: obs t, reward, next_obs t+1 (or a 'final' marker 100+t when it ended)."""
    done = terminated or truncated
    return {
        "obs": torch.tensor([[float(t)]]),
        "action": torch.tensor([[float(t)]]),
        "reward": torch.tensor([reward]),
        "next_obs": torch.tensor([[100.0 + t if done else t + 1.0]]),
        "terminated": torch.tensor([terminated]),
        "done": torch.tensor([done]),
    }


def _run(steps, n=3):
    window = NStepWindow(n, GAMMA)
    out = []
    for step in steps:
        transition = window.push(step)
        if transition is not None:
            out.append({k: v[0].item() if v[0].numel() == 1 else v[0].tolist() for k, v in transition.items()})
    return out


def test_three_step_returns_without_episode_end():
    steps = [_step(t, float(t + 1), False, False) for t in range(5)]
    out = _run(steps)
    assert len(out) == 3  # starts 0, 1, 2 are complete after 5 steps
    assert out[0]["obs"] == 0.0
    assert out[0]["reward"] == pytest.approx(1 + GAMMA * 2 + GAMMA**2 * 3)
    assert out[0]["next_obs"] == 3.0
    assert out[0]["discount"] == pytest.approx(GAMMA**3)
    assert out[2]["reward"] == pytest.approx(3 + GAMMA * 4 + GAMMA**2 * 5)


def test_termination_cuts_the_return_and_the_bootstrap():
    # Step 1 terminates: the transition from step 0 sums r0 + g*r1 and does not bootstrap.
    steps = [_step(0, 1.0, False, False), _step(1, 2.0, True, False), _step(2, 4.0, False, False),
             _step(3, 8.0, False, False), _step(4, 16.0, False, False)]
    out = _run(steps)
    assert out[0]["reward"] == pytest.approx(1 + GAMMA * 2)
    assert out[0]["discount"] == 0.0
    assert out[0]["next_obs"] == 101.0  # the final observation, unused with discount 0
    assert out[1]["reward"] == pytest.approx(2.0) and out[1]["discount"] == 0.0
    # Step 2 starts a new episode: nothing of the old one leaks in.
    assert out[2]["reward"] == pytest.approx(4 + GAMMA * 8 + GAMMA**2 * 16)
    assert out[2]["discount"] == pytest.approx(GAMMA**3)


def test_truncation_bootstraps_from_the_final_observation():
    steps = [_step(0, 1.0, False, False), _step(1, 1.0, False, True), _step(2, 1.0, False, False)]
    out = _run(steps)
    assert out[0]["reward"] == pytest.approx(1 + GAMMA)
    assert out[0]["discount"] == pytest.approx(GAMMA**2)  # truncated after 2 steps: gamma^2, not 0
    assert out[0]["next_obs"] == 101.0


def test_n_equal_one_is_the_one_step_target():
    out = _run([_step(0, 3.0, False, False), _step(1, 5.0, True, False)], n=1)
    assert [o["reward"] for o in out] == [3.0, 5.0]
    assert out[0]["discount"] == pytest.approx(GAMMA) and out[1]["discount"] == 0.0


def test_envs_are_independent():
    window = NStepWindow(2, GAMMA)
    # env 0 terminates at step 0, env 1 does not.
    first = {"obs": torch.zeros(2, 1), "action": torch.zeros(2, 1), "reward": torch.tensor([1.0, 1.0]),
             "next_obs": torch.tensor([[9.0], [1.0]]), "terminated": torch.tensor([True, False]),
             "done": torch.tensor([True, False])}
    second = {"obs": torch.ones(2, 1), "action": torch.zeros(2, 1), "reward": torch.tensor([2.0, 2.0]),
              "next_obs": torch.tensor([[2.0], [2.0]]), "terminated": torch.tensor([False, False]),
              "done": torch.tensor([False, False])}
    assert window.push(first) is None
    out = window.push(second)
    assert out["reward"].tolist() == pytest.approx([1.0, 1 + GAMMA * 2])
    assert out["discount"].tolist() == pytest.approx([0.0, GAMMA**2])
    assert out["next_obs"][:, 0].tolist() == [9.0, 2.0]


def test_rejects_bad_n():
    with pytest.raises(ValueError, match="nstep"):
        NStepWindow(0, GAMMA)
