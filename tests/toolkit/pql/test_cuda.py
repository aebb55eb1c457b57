"""PQL with CUDA devices: the replay ring, boards and learners on the GPU; mujoco-warp envs.

Skipped where torch sees no CUDA device (CI has none); on a GPU machine:
``python -m pytest tests/toolkit/pql/test_cuda.py`` (benchmarks/gpu_suite.sh runs it).
"""

import json
import threading

import pytest
import torch
import torch.multiprocessing as mp

from tests.toolkit.pql.conftest import run, trainer
from toolkit.checkpoint import load_checkpoint
from toolkit.config import PlacementKind
from toolkit.pql.roles import Role
from toolkit.pql.shared import NUM_COUNTERS, Counter, ParamBoard, SharedReplay
from toolkit.pql.trainer import make_placement

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _tensors(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _tensors(value)


def _train_and_check(cfg, actor_device: str):
    result = run(cfg)
    assert result.stop_reason == "max_env_steps"
    # Each role reported, from its own process, where its network's parameters and the replay ring were.
    where = json.loads((result.run_dir / "roles.json").read_text())
    for name in ("V-learner", "P-learner"):
        assert where[name]["device"].startswith("cuda") and where[name]["replay"].startswith("cuda"), where
    assert where["Actor"]["device"].startswith(actor_device) and where["Actor"]["replay"].startswith("cuda"), where
    checkpoint = load_checkpoint(result.run_dir)
    assert checkpoint["counters"]["v_updates"] > 0 and checkpoint["counters"]["p_updates"] > 0
    # Checkpoints hold CPU tensors whatever the roles' devices: they load on a machine without a GPU.
    assert {t.device.type for t in _tensors(checkpoint)} == {"cpu"}
    assert 0.0 <= result.eval_success <= 1.0

    from export.onnx import export_policy, load_exportable

    report = export_policy(load_exportable(result.run_dir), result.run_dir / "policy.onnx", rollout_steps=5,
                           rollout_envs=2, exporter="torchscript")
    assert report.max_abs_diff <= report.tolerance


def test_one_process_run_keeps_learners_replay_and_boards_on_the_gpu(tiny_config):
    cfg = tiny_config(learner_device="cuda", max_time_s=300.0, max_env_steps=8 * 60)
    session = trainer(cfg)
    assert session.shared.replay.obs.device.type == "cuda"
    assert all(board.data.device.type == "cuda" for board in session.shared.boards().values())
    placement = make_placement(session.context(), session.role_states)
    placement.start()
    try:
        for _ in range(200):
            placement.tick()
            if int(session.shared.counters[Counter.V_UPDATES]) > 20:
                break
        learners = {loop.role: loop.worker for loop in placement.loops}
        for role in (Role.V_LEARNER, Role.P_LEARNER):
            assert {p.device.type for p in learners[role].trained.parameters()} == {"cuda"}, role
            assert learners[role].generator.device.type == "cuda"
        assert int(session.shared.counters[Counter.V_UPDATES]) > 20
    finally:
        placement.shutdown()


@pytest.mark.parametrize("placement", [PlacementKind.sequential, PlacementKind.process])
def test_cuda_learners_with_cpu_envs_write_an_exportable_checkpoint(tiny_config, placement):
    _train_and_check(tiny_config(placement=placement, learner_device="cuda", max_time_s=300.0,
                                 max_env_steps=8 * 60), actor_device="cpu")


@pytest.mark.parametrize("placement", [PlacementKind.sequential, PlacementKind.process])
def test_warp_envs_and_learners_on_cuda(tiny_config, placement):
    pytest.importorskip("mujoco_warp")
    # The learners follow --device when --pql.learner-device is left out.
    cfg = tiny_config(placement=placement, sim="mujoco_warp", device="cuda", max_time_s=600.0, max_env_steps=8 * 60)
    assert cfg.learner_device() == "cuda"
    _train_and_check(cfg, actor_device="cuda")


def _child_reads_ring(replay, counters, out):
    """In a spawned process: the CUDA tensors arrived by IPC; sum what the parent wrote."""
    out[0] = float(replay.obs[: int(counters[Counter.REPLAY_SIZE])].sum())
    replay.obs[0] = -1.0  # and write back through the shared memory


def test_cuda_replay_is_shared_with_a_spawned_process_through_ipc():
    replay = SharedReplay(16, 2, 1, None, device="cuda")
    counters = torch.zeros(NUM_COUNTERS, dtype=torch.int64).share_memory_()
    batch = {"obs": torch.ones(4, 2, device="cuda"), "next_obs": torch.zeros(4, 2, device="cuda"),
             "action": torch.zeros(4, 1, device="cuda"), "reward": torch.zeros(4, device="cuda"),
             "discount": torch.ones(4, device="cuda")}
    replay.write(counters, batch)
    out = torch.zeros(1).share_memory_()
    process = mp.get_context("spawn").Process(target=_child_reads_ring, args=(replay, counters, out))
    process.start()
    process.join(120)
    assert process.exitcode == 0
    assert float(out[0]) == 8.0
    assert float(replay.obs[0, 0]) == -1.0


def test_cuda_board_is_never_torn_while_written():
    board = ParamBoard(1 << 20, share=False, device="cuda")
    stop = threading.Event()

    def writer():
        value = 0.0
        source = torch.empty(1 << 20, device="cuda")
        while not stop.is_set():
            value += 1.0
            source.fill_(value)
            board.publish([source])

    thread = threading.Thread(target=writer)
    thread.start()
    seen = set()
    try:
        target = [torch.zeros(1 << 20, device="cuda")]
        for _ in range(200):
            board.read_into(target)
            assert bool((target[0] == target[0][0]).all()), "mixed versions in one read"
            seen.add(float(target[0][0]))
    finally:
        stop.set()
        thread.join()
    assert len(seen) >= 5
