"""Per-env random streams (toolkit.contract.rng)."""

import numpy as np
import pytest
import torch

from toolkit.contract.rng import EnvStreams, env_seeds, mix64

TORCH = torch.zeros(0)  # the namespace (and device) the streams draw in


def splitmix64_reference(state: np.ndarray) -> np.ndarray:
    """SplitMix64's output function in uint64 numpy (which wraps by definition)."""
    with np.errstate(over="ignore"):
        z = state.astype(np.uint64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def test_mix64_matches_uint64_splitmix():
    values = np.array([0, 1, 2**31, 2**63 - 1, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15], dtype=np.uint64)
    ours = mix64(torch.from_numpy(values.view(np.int64).copy())).numpy().view(np.uint64)
    np.testing.assert_array_equal(ours, splitmix64_reference(values))


def test_uniform_is_in_range_and_roughly_uniform():
    streams = EnvStreams(4, TORCH)
    streams.seed(env_seeds(7, 4))
    draws = streams.uniform(None, (4, 5000))
    assert draws.dtype == torch.float64 and draws.shape == (4, 5000)
    assert float(draws.min()) >= 0.0 and float(draws.max()) < 1.0
    # 20000 draws: the mean's std is 0.002, each decile holds 10% +- 0.7% (3 sigma).
    assert abs(float(draws.mean()) - 0.5) < 0.01
    deciles = torch.histc(draws, bins=10, min=0.0, max=1.0) / draws.numel()
    assert float((deciles - 0.1).abs().max()) < 0.01
    # Streams of different envs are not copies or shifts of each other.
    assert not torch.equal(draws[0], draws[1])
    assert abs(float(torch.corrcoef(draws[:2])[0, 1])) < 0.05


def test_each_env_stream_depends_only_on_its_own_seed_and_draws():
    together = EnvStreams(3, TORCH)
    together.seed(env_seeds(10, 3))
    alone = EnvStreams(1, TORCH)
    alone.seed(env_seeds(12, 1))
    # Env 2 of the batch seeded 10 is a single env seeded 12, whatever the others draw.
    together.uniform(torch.tensor([0, 1]), (2, 7))
    first = together.uniform(torch.tensor([2]), (1, 3))
    both = together.uniform(None, (3, 2))
    np.testing.assert_array_equal(first.numpy(), alone.uniform(None, (1, 3)).numpy())
    np.testing.assert_array_equal(both[2:].numpy(), alone.uniform(None, (1, 2)).numpy())


def test_reseeding_repeats_and_draws_advance():
    streams = EnvStreams(2, TORCH)
    streams.seed(env_seeds(3, 2))
    a = streams.uniform(None, (2, 4))
    b = streams.uniform(None, (2, 4))
    assert not torch.equal(a, b)
    streams.seed(env_seeds(3, 2))
    np.testing.assert_array_equal(streams.uniform(None, (2, 4)).numpy(), a.numpy())
    streams.seed(torch.tensor([4]), ids=torch.tensor([1]))  # restart one env only
    np.testing.assert_array_equal(streams.uniform(None, (2, 4))[0].numpy(), b[0].numpy())


def test_shapes_must_have_one_row_per_env():
    streams = EnvStreams(3, TORCH)
    assert streams.uniform(torch.tensor([0, 2]), (2,)).shape == (2,)
    assert streams.uniform(None, (3, 2, 4)).shape == (3, 2, 4)
    with pytest.raises(ValueError, match="first dimension must be the number of envs drawn for \\(2\\)"):
        streams.uniform(torch.tensor([0, 2]), (3, 1))
    with pytest.raises(ValueError, match="first dimension"):
        streams.uniform(None, ())


def test_env_seeds():
    assert env_seeds(5, 3).tolist() == [5, 6, 7]
    assert env_seeds([9, 1, 4], 3).tolist() == [9, 1, 4]
    with pytest.raises(ValueError, match="one per env"):
        env_seeds([1, 2], 3)
    with pytest.raises(ValueError, match="non-negative"):
        env_seeds([1, -2, 3], 3)
    with pytest.raises(ValueError, match="seed must be in"):
        env_seeds(-1, 3)
    with pytest.raises(TypeError):
        env_seeds(True, 3)


def test_numpy_and_torch_streams_draw_the_same_numbers():
    """The deployment sim (numpy) and the training env (torch) replay the same episode only if
    their streams agree bit for bit, also after partial draws and reseeds."""
    ours, theirs = EnvStreams(3), EnvStreams(3, TORCH)
    for streams in (ours, theirs):
        streams.seed(env_seeds(2**40 + 5, 3))
    np.testing.assert_array_equal(ours.uniform(None, (3, 4, 2)), theirs.uniform(None, (3, 4, 2)).numpy())
    np.testing.assert_array_equal(ours.uniform(np.array([2, 0]), (2, 5)),
                                  theirs.uniform(torch.tensor([2, 0]), (2, 5)).numpy())
    drawn = ours.uniform(None, (3,))
    assert isinstance(drawn, np.ndarray) and ours.key.dtype == np.int64
    np.testing.assert_array_equal(drawn, theirs.uniform(None, (3,)).numpy())
