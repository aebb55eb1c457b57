"""Shared-memory weight boards and the replay ring."""

import threading

import torch

from toolkit.pql.actor import mixed_noise_std
from toolkit.pql.shared import NUM_COUNTERS, ParamBoard, SharedReplay
from toolkit.pql.shared import Counter as C


def test_board_round_trip_and_version_skip():
    source = [torch.randn(3, 4), torch.randn(5)]
    board = ParamBoard.for_tensors(source)
    board.publish(source)
    target = [torch.zeros(3, 4), torch.zeros(5)]
    version = board.read_into(target)
    assert version == 2
    torch.testing.assert_close(target[0], source[0])
    torch.testing.assert_close(target[1], source[1])
    target[0].zero_()
    assert board.read_into(target, known_version=version) == version
    assert target[0].abs().sum() == 0  # unchanged version: nothing copied


def test_reader_never_sees_a_torn_write():
    board = ParamBoard(100_000)
    stop = threading.Event()

    def writer():
        value = 0.0
        while not stop.is_set():
            value += 1.0
            board.publish([torch.full((100_000,), value)])

    thread = threading.Thread(target=writer)
    thread.start()
    seen = set()
    try:
        target = [torch.zeros(100_000)]
        for _ in range(300):
            board.read_into(target)
            assert bool((target[0] == target[0][0]).all()), "mixed versions in one read"
            seen.add(float(target[0][0]))
    finally:
        stop.set()
        thread.join()
    # The writer and the reader did interleave: the reads saw many different versions.
    assert len(seen) >= 10, f"only {len(seen)} versions seen: the test did not exercise concurrent writes"


def test_replay_ring_wraps_and_counts():
    replay = SharedReplay(capacity=5, obs_dim=2, action_dim=1, critic_obs_dim=None)
    counters = torch.zeros(NUM_COUNTERS, dtype=torch.int64)
    for start in (0, 3):
        batch = {"obs": torch.arange(start, start + 3, dtype=torch.float32)[:, None].repeat(1, 2),
                 "next_obs": torch.zeros(3, 2), "action": torch.zeros(3, 1), "reward": torch.zeros(3),
                 "discount": torch.ones(3)}
        replay.write(counters, batch)
    assert int(counters[C.REPLAY_SIZE]) == 5
    assert int(counters[C.REPLAY_NEXT]) == 1
    assert replay.obs[:, 0].tolist() == [5.0, 1.0, 2.0, 3.0, 4.0]  # row 0 overwritten by the 6th item
    idx = replay.sample_indices(counters, 1000, torch.Generator().manual_seed(0))
    assert int(idx.min()) >= 0 and int(idx.max()) <= 4


def test_mixed_noise_schedule():
    sigma = mixed_noise_std(64, 0.05, 0.8)
    assert sigma.shape == (64, 1)
    assert sigma[0].item() == torch.tensor(0.05).item() and abs(sigma[-1].item() - 0.8) < 1e-6
    assert bool((sigma[1:] > sigma[:-1]).all())


def test_sampled_indices_are_drawn_on_the_rings_device():
    replay = SharedReplay(capacity=8, obs_dim=1, action_dim=1, critic_obs_dim=None, share=False)
    counters = torch.zeros(NUM_COUNTERS, dtype=torch.int64)
    counters[C.REPLAY_SIZE] = 8
    generator = torch.Generator(device=replay.device).manual_seed(1)
    idx = replay.sample_indices(counters, 16, generator)
    assert idx.device == replay.device and idx.dtype == torch.int64
    batch = replay.gather(idx, ["obs", "reward"], replay.device)
    assert batch["obs"].shape == (16, 1) and batch["obs"].device == replay.device
