"""The C-engine backend: live tensors (no copies), batched stepping equal to a loop of
MjData, per-env resets and model fields, and detection of unstable physics."""

import mujoco
import numpy as np
import pytest
import torch

from toolkit.sim import BACKENDS, make_sim

# Two pendulums, one position-controlled, and a site on each tip: enough to exercise every
# state and derived field the envs use, and cheap to step.
XML = """
<mujoco>
  <option timestep="0.005"/>
  <worldbody>
    <body name="arm" pos="0 0 1">
      <joint name="hinge" type="hinge" axis="0 1 0" damping="0.05"/>
      <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.02" mass="0.5"/>
      <site name="tip" pos="0.3 0 0"/>
    </body>
    <body name="free_arm" pos="0 1 1">
      <joint name="free_hinge" type="hinge" axis="0 1 0" damping="0.05"/>
      <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.02" mass="0.5"/>
      <site name="free_tip" pos="0.3 0 0"/>
    </body>
    <body name="target" mocap="true" pos="0 0 2"/>
  </worldbody>
  <actuator>
    <position joint="hinge" kp="5" ctrlrange="-1 1"/>
  </actuator>
</mujoco>
"""


@pytest.fixture(scope="module")
def model():
    return mujoco.MjModel.from_xml_string(XML)


def make(model, n=3):
    return make_sim("mujoco_batch", model, n, nthread=1)


def test_state_tensors_alias_the_simulation_without_copies(model):
    sim = make(model)
    assert sim.qpos.shape == (3, model.nq) and sim.qvel.shape == (3, model.nv)
    assert sim.ctrl.shape == (3, model.nu) and sim.mocap_quat.shape == (3, 1, 4)
    pointers = {name: getattr(sim, name).data_ptr() for name in ("qpos", "qvel", "ctrl", "mocap_quat")}
    sim.qpos[1, 0] = 0.7
    sim.mocap_quat[2, 0] = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    sim.forward(torch.tensor([1, 2]))
    assert sim.get_data(1).qpos[0] == 0.7
    np.testing.assert_array_equal(sim.get_data(2).mocap_quat[0], [0.0, 1.0, 0.0, 0.0])
    sim.step(4)
    # The physics advanced the very memory the tensors view.
    assert sim.qpos[1, 0] != 0.7
    assert sim.get_data(1).qpos[0] == sim.qpos[1, 0]
    assert {name: getattr(sim, name).data_ptr() for name in pointers} == pointers


def test_batched_step_equals_a_loop_over_single_envs(model):
    sim = make(model)
    ctrl = torch.tensor([[-0.8], [0.1], [0.9]], dtype=torch.float64)
    sim.qvel[:, 1] = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)
    sim.ctrl[:] = ctrl
    sim.forward(torch.arange(3))
    sim.step(25)
    tip = sim.data_field("site_xpos")
    for env in range(3):
        data = mujoco.MjData(model)
        data.ctrl[:] = ctrl[env].numpy()
        data.qvel[1] = [0.0, 1.0, -2.0][env]
        mujoco.mj_step(model, data, nstep=25)
        np.testing.assert_array_equal(sim.qpos[env].numpy(), data.qpos)
        np.testing.assert_array_equal(sim.qvel[env].numpy(), data.qvel)
        # Kinematics describe the new state (the backend steps with mjSTAGE_VEL).
        mujoco.mj_kinematics(model, data)
        np.testing.assert_allclose(tip[env].numpy(), data.site_xpos, atol=1e-12)


def test_reset_touches_only_the_given_envs(model):
    sim = make(model)
    sim.qpos[:] = 0.5
    sim.ctrl[:] = 0.3
    sim.reset(torch.tensor([0, 2]))
    np.testing.assert_array_equal(sim.qpos[:, 0].numpy(), [0.0, 0.5, 0.0])
    np.testing.assert_array_equal(sim.ctrl[:, 0].numpy(), [0.0, 0.3, 0.0])


def test_model_fields_are_per_env(model):
    sim = make(model)
    damping = sim.model_field("dof_damping")
    assert damping.shape == (3, model.nv)
    damping[1, 1] = 50.0  # only env 1's free pendulum is heavily damped
    sim.qvel[:, 1] = 3.0
    sim.step(10)
    speed = sim.qvel[:, 1].abs()
    assert speed[1] < 0.5 * speed[0]
    assert speed[0] == speed[2]
    gravity = sim.model_field("opt.gravity")
    assert gravity.shape == (3, 3)
    np.testing.assert_array_equal(gravity[0].numpy(), model.opt.gravity)


def test_model_changed_recomputes_derived_constants_per_env(model):
    sim = make(model)
    mass = sim.model_field("body_mass")
    mass[2] *= 4.0
    sim.model_changed(torch.tensor([2]))
    assert sim.get_model(2).body_subtreemass[0] > sim.get_model(0).body_subtreemass[0] + 1.0
    assert sim.get_model(1).body_subtreemass[0] == pytest.approx(sim.get_model(0).body_subtreemass[0])


@pytest.mark.parametrize("field, value", [("qpos", float("nan")), ("qvel", float("inf")), ("qvel", 1e30)])
def test_diverged_reports_the_envs_mujoco_reset(model, field, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo logs the warning to MUJOCO_LOG.TXT in the working directory
    sim = make(model)
    sim.step(2)
    assert not sim.diverged().any()
    getattr(sim, field)[1, 1] = value
    sim.step(2)
    assert sim.diverged().tolist() == [False, True, False]
    # MuJoCo already put env 1 back to a finite state: a finite check alone would miss it.
    assert torch.isfinite(sim.qpos).all() and torch.isfinite(sim.qvel).all()
    sim.step(2)
    assert not sim.diverged().any(), "a divergence is reported once, for the step it happened in"


def test_mujoco_errors_in_some_envs_mark_them_diverged(model, monkeypatch):
    """A MuJoCo error (e.g. contact arena overflow) in one env must not stop the batch."""
    from mujoco.batch import SimulationError

    sim = make(model)

    def failing_step(**kwargs):
        raise SimulationError(np.array([2]), "mj_stackAlloc: insufficient memory", 3)

    monkeypatch.setattr(sim.batch, "step", failing_step)
    sim.step(1)
    assert sim.diverged().tolist() == [False, False, True]


def test_make_sim_rejects_bad_requests(model):
    with pytest.raises(ValueError, match="unknown sim backend 'bullet'.*mujoco_batch"):
        make_sim("bullet", model, 2)
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        make_sim("mujoco_batch", model, 0)
    with pytest.raises(ValueError, match="runs on the CPU.*mujoco_warp"):
        make_sim("mujoco_batch", model, 2, device="cuda")
    assert set(BACKENDS) >= {"mujoco_batch", "mujoco_warp"}
