"""The deployment sim backend reproduces the trainer's evaluation.

Both sides start every episode from the same initial states (drawn by the trainer's VecEnv): the
trainer's ``toolkit.pql.evaluate`` runs the torch actor in the batched simulator, the deployment
runner runs the exported ONNX file on the single-MjData sim backend. Same physics, same task
code, same action mapping: returns and success rates must agree.

``test_trained_policy_success_rate_matches_trainer_eval`` uses the trained D'Claw turn policy
shipped in ``tests/data``.
"""

from __future__ import annotations

from pathlib import Path

import mujoco
import numpy as np
import pytest

from deploy.backends.sim import SimBackend
from deploy.policy import load_policy
from deploy.runner import Runner, RunnerConfig
from robots import make_task
from tests.deploy.conftest import REPO


class TrainerStates(SimBackend):
    """The deployment sim backend, started from given initial states instead of its own draws."""

    def __init__(self, task, control_dt, states):
        super().__init__(task, control_dt)
        self.states = list(states)

    def reset(self, rng):
        result = super().reset(rng)
        sim_state, task_state = self.states.pop(0)
        for name, value in sim_state.items():
            getattr(self.data, name)[:] = value
        mujoco.mj_forward(self.model, self.data)
        result.task_state = {name: value[None].astype(np.float64) for name, value in task_state.items()}
        result.joint_targets = self.data.ctrl[self._actuators].copy()
        return result


def compare(onnx_path: Path, checkpoint: Path, episodes: int, seed: int = 10_000) -> dict[str, float]:
    """Trainer eval vs deployment sim from the same initial states: success rates and mean returns."""
    from toolkit.checkpoint import load_policy as load_checkpoint_policy
    from toolkit.config import EnvConfig
    from toolkit.envs.vec_env import VecEnv
    from toolkit.pql.evaluate import evaluate

    trained = load_checkpoint_policy(checkpoint)
    task = make_task(trained.task, **trained.task_overrides)
    env = VecEnv(task, EnvConfig(task=trained.task, num_envs=episodes, nthread=1, seed=seed))
    env.reset(seed=seed)  # evaluate() resets with the same seed: these are its initial states
    sim = env.sim
    # Copies: the tensors are live views of the batched simulator, which evaluate() steps on.
    states = [({name: getattr(sim, name)[i].numpy().copy() for name in ("qpos", "qvel", "ctrl", "mocap_quat")},
               {name: value[i].numpy().copy() for name, value in env.task_state.items()}) for i in range(episodes)]
    trainer = evaluate(env, trained.actor, trained.obs_normalizer, seed=seed)

    policy = load_policy(onnx_path)
    backend = TrainerStates(make_task(trained.task, **trained.task_overrides), policy.metadata.robot.control_dt, states)
    backend.open()
    results = Runner(policy, backend, RunnerConfig(episodes=episodes, realtime=False)).run()
    return {"trainer_success": trainer["eval_success"], "trainer_return": trainer["eval_return"],
            "deploy_success": float(np.mean([r.success for r in results])),
            "deploy_return": float(np.mean([r.episode_return for r in results]))}


def test_sim_backend_reproduces_trainer_eval(exported_policy):
    from toolkit.checkpoint import latest_checkpoint

    checkpoint = latest_checkpoint(exported_policy.parent / "deploy-tests")
    result = compare(exported_policy, checkpoint, episodes=8)
    assert result["deploy_success"] == pytest.approx(result["trainer_success"], abs=0.05)
    assert result["deploy_return"] == pytest.approx(result["trainer_return"], rel=0.01), result


#: A policy trained by `python -m train.dclaw` on a 2-core CPU (dclaw-turn, ~0.8 eval success),
#: shipped as test data: the policy part of its checkpoint (tests/data/README.md).
TRAINED = REPO / "tests" / "data" / "dclaw_turn_trained.pt"


def test_trained_policy_success_rate_matches_trainer_eval(tmp_path):
    from export.onnx import export_policy, load_exportable

    onnx_path = tmp_path / "trained.onnx"
    export_policy(load_exportable(TRAINED), onnx_path, rollout_steps=5, rollout_envs=1, exporter="torchscript")
    result = compare(onnx_path, TRAINED, episodes=64)
    assert result["trainer_success"] >= 0.6, f"the shipped policy should be a trained one: {result}"
    assert abs(result["deploy_success"] - result["trainer_success"]) <= 0.05, result
