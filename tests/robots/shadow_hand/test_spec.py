"""robots.shadow_hand.spec against the compiled scene (the gymnasium-robotics MJCF)."""

import json
import subprocess
import sys

import mujoco
import numpy as np
import pytest

from robots.shadow_hand import spec
from robots.shadow_hand.scene import ARENA_BYTES, CUBE_START, build_scene
from toolkit.contract.task import bind_robot

P = spec.MODEL_PREFIX


@pytest.fixture(scope="module")
def model():
    return build_scene()


def _joint(model, name):
    return model.joint(P + name)


def test_spec_imports_neither_torch_nor_mujoco():
    code = ("import json, sys, robots.shadow_hand.spec\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'mujoco'})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_joints_match_the_model(model):
    hand = [model.joint(i).name for i in range(model.njnt) if model.joint(i).name.startswith(P)]
    assert hand == [P + name for name in spec.ALL_JOINT_NAMES]
    assert len(spec.ALL_JOINT_NAMES) == 24
    assert all(model.jnt_type[_joint(model, n).id] == mujoco.mjtJoint.mjJNT_HINGE for n in spec.ALL_JOINT_NAMES)
    unactuated = set(spec.ALL_JOINT_NAMES) - set(spec.JOINT_NAMES)
    assert unactuated == set(spec.COUPLED_JOINTS)


def test_actuators_limits_and_pose_match_the_model(model):
    assert model.nu == spec.SPEC.num_joints == 20
    for i, name in enumerate(spec.JOINT_NAMES):
        actuator = model.actuator(i)
        assert actuator.name == name
        assert model.actuator_trntype[i] == mujoco.mjtTrn.mjTRN_JOINT
        assert model.joint(model.actuator_trnid[i, 0]).name == P + name
        # Position servos: gain kp, bias -kp q.
        assert model.actuator_biasprm[i, 1] == pytest.approx(-model.actuator_gainprm[i, 0])
    np.testing.assert_allclose(model.actuator_ctrlrange[:, 0], spec.JOINT_LOW)
    np.testing.assert_allclose(model.actuator_ctrlrange[:, 1], spec.JOINT_HIGH)
    joint_range = np.array([model.jnt_range[_joint(model, n).id] for n in spec.JOINT_NAMES])
    np.testing.assert_allclose(joint_range, model.actuator_ctrlrange)
    assert np.all((spec.DEFAULT_POSE >= spec.JOINT_LOW) & (spec.DEFAULT_POSE <= spec.JOINT_HIGH))
    indices = bind_robot(model, spec.SPEC, tuple(P + n for n in spec.JOINT_NAMES))
    np.testing.assert_array_equal(indices.actuator_ids, np.arange(20))


def test_coupling_tendons_match_the_ratio(model):
    for distal, driver in spec.COUPLED_JOINTS.items():
        tendon = model.tendon(f"{P}T_{driver[:2]}J1c")
        start, count = model.tendon_adr[tendon.id], model.tendon_num[tendon.id]
        coef = {model.joint(model.wrap_objid[w]).name: model.wrap_prm[w] for w in range(start, start + count)}
        assert set(coef) == {P + distal, P + driver}
        assert -coef[P + driver] / coef[P + distal] == pytest.approx(spec.COUPLING_RATIO)
        assert model.tendon_limited[tendon.id]


def test_distal_joints_follow_their_drivers_in_simulation(model):
    data = mujoco.MjData(model)
    drivers = [spec.JOINT_NAMES.index(d) for d in spec.COUPLED_JOINTS.values()]
    data.ctrl[drivers] = 0.8
    mujoco.mj_step(model, data, nstep=200)
    driver_q = np.array([data.joint(P + d).qpos[0] for d in spec.COUPLED_JOINTS.values()])
    distal_q = np.array([data.joint(P + d).qpos[0] for d in spec.COUPLED_JOINTS])
    np.testing.assert_allclose(driver_q, 0.8, atol=0.05)
    # The tendon allows +-1 mm / 0.00705 m = +-0.14 rad of slack around the ratio.
    np.testing.assert_allclose(distal_q, spec.COUPLING_RATIO * driver_q, atol=0.15)
    assert np.all(distal_q > 0.6)  # without the coupling they would hang at their 0 limit


def test_rates_sites_and_scene(model):
    assert model.opt.timestep == spec.PHYSICS_DT
    substeps = spec.CONTROL_DT / spec.PHYSICS_DT
    assert substeps == round(substeps) and 20 <= 1 / spec.CONTROL_DT <= 60
    for site in spec.FINGERTIP_SITES:
        assert model.site(site).id >= 0
    assert model.narena == ARENA_BYTES
    cube = model.joint("cube")
    assert model.jnt_type[cube.id] == mujoco.mjtJoint.mjJNT_FREE
    np.testing.assert_allclose(model.body("cube").pos, CUBE_START)
    assert model.body_mocapid[model.body("goal").id] == 0
    goal_geom = model.geom("goal")
    assert model.geom_contype[goal_geom.id] == model.geom_conaffinity[goal_geom.id] == 0
    assert model.nmocap == 1 and model.nq == 24 + 7  # no target block, no floor
