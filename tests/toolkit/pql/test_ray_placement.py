"""The Ray placement end to end on a local Ray: the process mode's outputs, the ratios, failures."""

import dataclasses
import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.toolkit.pql.conftest import run as train
from toolkit.checkpoint import list_checkpoints, load_checkpoint, load_policy
from toolkit.config import PlacementKind, PQLConfig, TrainConfig
from toolkit.pql import ray_placement
from toolkit.pql.roles import ROLES, Role, TrainingError

ROLE_NAMES = {spec.name for spec in ROLES.values()}
RAY = PlacementKind.ray

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (starting it is the slow part); one logical CPU per role."""
    ray.init(address="local", num_cpus=len(ROLE_NAMES), include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _gone(pid: int, timeout_s: float = 15.0) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_ray_run_writes_the_process_mode_outputs_and_holds_the_ratios(local_ray, tiny_config, tmp_path):
    pql = PQLConfig(actor_hidden=(32, 32), critic_hidden=(32, 32), batch_size=64, replay_size=20_000,
                    warmup_steps=4, critic_updates_per_actor_step=8, critic_updates_per_policy_update=2)
    # About 36 actor steps after warm-up: the gates' slack (2 steps) is a few % of that. Counted
    # in env steps; the time limit only guards against a hang (on an oversubscribed machine the
    # coordinator's round trips slow Ray runs many times more than the process placement).
    result = train(tiny_config(placement=RAY, max_time_s=900.0, max_env_steps=8 * 40, pql=pql))
    assert result.stop_reason == "max_env_steps"
    run_dir = result.run_dir
    assert (run_dir / "config.yaml").is_file()
    assert set(json.loads((run_dir / "roles.json").read_text())) == set(ROLE_NAMES)

    # metrics.jsonl: the same records as the other placements, with the ratios held.
    records = _records(run_dir)
    reference = train(tiny_config(run_dir=str(tmp_path / "sequential"), max_env_steps=8 * 12, pql=pql))
    assert set(records[-1]) == set(_records(reference.run_dir)[-1])
    last = records[-1]
    assert last["critic_per_actor_step"] == pytest.approx(8, rel=0.1)
    assert last["critic_per_policy_update"] == pytest.approx(2, rel=0.1)
    assert last["v_updates"] > 200 and math.isfinite(last["critic_loss"]) and math.isfinite(last["actor_loss"])
    assert "eval_success" in last

    # The final checkpoint is one consistent snapshot of the three roles' states and counters.
    checkpoint = load_checkpoint(run_dir)
    counters = checkpoint["counters"]
    assert {k: counters[k] for k in result.counters} == result.counters
    assert counters["v_updates"] == last["v_updates"] and counters["env_steps"] == last["env_steps"]
    assert checkpoint["critic_optimizer"]["state"][0]["step"] == counters["v_updates"]
    assert checkpoint["actor_optimizer"]["state"][0]["step"] == counters["p_updates"]
    # The Actor's normalizer saw every env step's next observation (one update per actor step).
    assert int(checkpoint["obs_normalizer"]["count"]) == counters["env_steps"]
    policy = load_policy(run_dir)  # what export and deployment load
    assert policy.env_steps == counters["env_steps"]
    action = policy.actor(policy.obs_normalizer(torch.zeros(1, policy.obs_layout.size)))
    assert action.shape == (1, 9) and bool(torch.isfinite(action).all())


def test_a_failing_role_raises_training_error_naming_it(local_ray, tiny_config):
    cfg = tiny_config(placement=RAY, max_time_s=120.0,
                      pql=dataclasses.replace(tiny_config().pql, reward_scale=float("inf")),
                      log=dataclasses.replace(tiny_config().log, checkpoint_interval_s=1e9))
    with pytest.raises(TrainingError, match="V-learner failed: NonFiniteLossError: critic loss is"):
        train(cfg)
    assert list_checkpoints(cfg.run_dir) == []  # a failed run writes no final checkpoint


def test_a_dead_role_actor_stops_every_role_with_training_error(local_ray, tiny_config):
    cfg = tiny_config(placement=RAY, max_time_s=300.0)
    roles = Path(cfg.run_dir) / "roles.json"
    pids: dict[str, int] = {}

    def kill_the_p_learner() -> None:
        deadline = time.time() + 120
        while not (roles.exists() and (Path(cfg.run_dir) / "metrics.jsonl").exists()) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # training, not starting
        pids.update({name: where["pid"] for name, where in json.loads(roles.read_text()).items()})
        os.kill(pids["P-learner"], signal.SIGKILL)

    killer = threading.Thread(target=kill_the_p_learner, daemon=True)
    killer.start()
    with pytest.raises(TrainingError, match="P-learner Ray actor died"):
        train(cfg)
    killer.join()
    assert all(_gone(pid) for pid in pids.values())  # no role outlives the run


@pytest.mark.parametrize("cluster,expected", [
    ({"CPU": 16, "GPU": 4}, {"Actor": 0, "V-learner": 1, "P-learner": 1}),  # one GPU per learner
    ({"CPU": 16, "GPU": 1}, {"Actor": 0, "V-learner": 0.5, "P-learner": 0.5}),  # one GPU, shared
])
def test_learners_on_cuda_get_a_gpu_each_or_share_one(monkeypatch, cluster, expected):
    monkeypatch.setattr(ray, "cluster_resources", lambda: cluster)
    resources = ray_placement._role_resources(TrainConfig(pql=PQLConfig(learner_device="cuda")))
    assert {ROLES[role].name: r["num_gpus"] for role, r in resources.items()} == expected
    assert set(resources) == set(Role)
    assert all(r["num_cpus"] == 1 for r in resources.values())


@pytest.mark.parametrize("cluster,message", [({"CPU": 16}, "has no GPU"), ({"CPU": 2, "GPU": 2}, "has 2 CPUs")])
def test_a_cluster_that_cannot_hold_the_roles_is_a_clear_error(monkeypatch, cluster, message):
    monkeypatch.setattr(ray, "cluster_resources", lambda: cluster)
    with pytest.raises(TrainingError, match=message):
        ray_placement._role_resources(TrainConfig(pql=PQLConfig(learner_device="cuda")))


def test_missing_ray_names_the_install_command(monkeypatch):
    monkeypatch.setattr(ray_placement, "ray", None)
    with pytest.raises(TrainingError, match=r"pip install -e '\.\[distributed\]'"):
        ray_placement._connect(TrainConfig().replace(placement=RAY))
