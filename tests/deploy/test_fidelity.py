"""Training and deployment run one step: the same policy, seed and DR draw, stepped by the
training VecEnv (one env, C engine) and by the deployment runner on the sim backend, give the
same observations, rewards and terminations over whole episodes.

Both sides share the contract's step function, substeps rule, DR sampler and per-env random
stream (toolkit.contract), so any drift between them (a missing termination, another substeps
rule, a DR quantity left out, random numbers drawn in another order) fails here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deploy.backends.sim import SimBackend
from deploy.log import LogReader, LogWriter
from deploy.policy import load_policy
from deploy.runner import Runner, RunnerConfig
from deploy.testing import synthetic_policy, task_metadata
from robots import make_task
from toolkit.config import EnvConfig
from toolkit.envs.vec_env import VecEnv

TOLERANCE = 1e-6


def training_episodes(task_name: str, policy, seed: int, randomize: bool, episodes: int) -> list[dict]:
    """Observations, rewards and terminations of the first ``episodes`` episodes of a one-env VecEnv."""
    env = VecEnv(make_task(task_name), EnvConfig(task=task_name, num_envs=1, nthread=1, seed=seed,
                                                 randomize=randomize))
    out, obs = [], env._obs  # the first episode's first observation (the constructor reset the env)
    try:
        while len(out) < episodes:
            record = {"obs": [], "reward": [], "terminated": False}
            while True:
                record["obs"].append(obs[0].numpy().copy())
                action = torch.from_numpy(policy(obs.numpy()).astype(np.float64))
                obs, reward, terminated, truncated, info = env.step(action)
                # The float64 reward (the returned one is float32, whose rounding alone is ~4e-6 at 50).
                record["reward"].append(float(sum(info["reward_terms"].values())[0]))
                assert abs(record["reward"][-1] - float(reward[0])) <= 1e-5 * max(1.0, abs(float(reward[0])))
                if bool(info["done"][0]):
                    record["terminated"] = bool(terminated[0])
                    break
            out.append({k: np.array(v) if k != "terminated" else v for k, v in record.items()})
    finally:
        env.close()
    return out


def deployment_episodes(task_name: str, policy, seed: int, randomize: bool, episodes: int, log: Path) -> list[dict]:
    """The same from deploy's runner on the sim backend, read back from its HDF5 log."""
    task = make_task(task_name)
    backend = SimBackend(task, task.robot.control_dt, randomize=randomize)
    backend.open()
    writer = None

    def make_log(step_fields, episode_fields):
        nonlocal writer
        writer = LogWriter(log, episodes, step_fields, episode_fields, {"test": "fidelity"})
        return writer

    runner = Runner(policy, backend, RunnerConfig(episodes=episodes, seed=seed, realtime=False), log_factory=make_log)
    results = runner.run()
    writer.close()
    out = []
    with LogReader(log) as reader:
        for result in results:
            episode = reader.episode(result.index)
            out.append({"obs": episode["obs"], "reward": episode["reward"], "terminated": result.terminated})
    return out


def _compare(train: list[dict], deploy: list[dict]) -> None:
    for index, (ours, theirs) in enumerate(zip(train, deploy, strict=True)):
        assert len(ours["obs"]) == len(theirs["obs"]), f"episode {index}: lengths differ"
        assert ours["terminated"] == theirs["terminated"], f"episode {index}: termination differs"
        assert np.max(np.abs(ours["obs"] - theirs["obs"])) <= TOLERANCE, f"episode {index}: observations differ"
        assert np.max(np.abs(ours["reward"] - theirs["reward"])) <= TOLERANCE, f"episode {index}: rewards differ"


@pytest.mark.parametrize("randomize", [False, True], ids=["nominal", "randomized"])
def test_dclaw_turn_training_and_deployment_step_alike(tmp_path, randomize):
    task = make_task("dclaw-turn")
    policy = load_policy(synthetic_policy(tmp_path / "p.onnx", task_metadata(task), seed=1, weight_scale=2.0))
    train = training_episodes("dclaw-turn", policy, seed=5, randomize=randomize, episodes=2)
    deploy = deployment_episodes("dclaw-turn", policy, seed=5, randomize=randomize, episodes=2, log=tmp_path / "d.h5")
    assert [len(e["obs"]) for e in train] == [task.episode_steps] * 2
    _compare(train, deploy)
    assert not np.allclose(train[0]["obs"][0], train[1]["obs"][0])  # two different episodes, both matched


def test_shadow_hand_training_and_deployment_step_alike_until_the_cube_falls(tmp_path):
    """An untrained policy that tilts the wrist (WRJ0 to its limit) drops the cube: the deployment
    episode ends there, as training's does."""
    task = make_task("shadow_hand-reorient")
    tilt = np.zeros(task.robot.num_joints)
    tilt[task.robot.joint_names.index("WRJ0")] = -3.0
    policy = load_policy(synthetic_policy(tmp_path / "p.onnx", task_metadata(task), seed=2, bias=tilt))
    train = training_episodes("shadow_hand-reorient", policy, seed=3, randomize=True, episodes=1)
    deploy = deployment_episodes("shadow_hand-reorient", policy, seed=3, randomize=True, episodes=1,
                                 log=tmp_path / "d.h5")
    assert train[0]["terminated"] and len(train[0]["obs"]) < task.episode_steps, "the cube did not fall"
    _compare(train, deploy)
