"""robots.dclaw.spec against the compiled MJCF: the constants deployment relies on must
describe the model the policy was trained on."""

import math

import mujoco
import numpy as np
import pytest

from robots.dclaw import spec
from toolkit.contract.task import bind_robot


@pytest.fixture(scope="module")
def model():
    return mujoco.MjModel.from_xml_path(str(spec.TURN_XML))


def test_actuators_match_the_spec_joints_in_order(model):
    assert model.nu == len(spec.JOINT_NAMES) == 9
    names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_ACTUATOR, i) for i in range(model.nu)]
    assert names == list(spec.JOINT_NAMES)
    for i, name in enumerate(spec.JOINT_NAMES):
        joint = model.actuator_trnid[i, 0]
        assert model.actuator_trntype[i] == mujoco.mjtTrn.mjTRN_JOINT
        assert mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, joint) == name
        assert model.jnt_type[joint] == mujoco.mjtJoint.mjJNT_HINGE


def test_limits_and_ctrlrange_equal_the_spec(model):
    joints = [model.joint(name).id for name in spec.JOINT_NAMES]
    np.testing.assert_allclose(model.jnt_range[joints, 0], spec.JOINT_LOW, atol=1e-6)
    np.testing.assert_allclose(model.jnt_range[joints, 1], spec.JOINT_HIGH, atol=1e-6)
    assert model.jnt_limited[joints].all()
    np.testing.assert_allclose(model.actuator_ctrlrange[:, 0], spec.JOINT_LOW, atol=1e-6)
    np.testing.assert_allclose(model.actuator_ctrlrange[:, 1], spec.JOINT_HIGH, atol=1e-6)
    assert model.actuator_ctrllimited.all()
    # ROBEL's ranges: base +-0.48, middle +-pi/3, tip +-pi/2.
    np.testing.assert_allclose(spec.JOINT_HIGH[:3], [0.48, math.pi / 3, math.pi / 2])
    bind_robot(model, spec.SPEC)  # the env's own check agrees


def test_position_servos(model):
    kp = model.actuator_gainprm[:, 0]
    assert (kp > 0).all()
    # Position actuators: force = kp * (ctrl - q), i.e. biasprm = (0, -kp, -kv).
    np.testing.assert_allclose(model.actuator_biasprm[:, 1], -kp)
    assert (model.actuator_forcelimited == 1).all() and (model.actuator_forcerange[:, 1] > 0).all()


def test_default_pose_inside_limits_and_equal_to_the_home_keyframe(model):
    assert np.all(spec.DEFAULT_POSE >= spec.JOINT_LOW) and np.all(spec.DEFAULT_POSE <= spec.JOINT_HIGH)
    home = model.keyframe("home")
    joints = [model.joint(name).qposadr[0] for name in spec.JOINT_NAMES]
    np.testing.assert_allclose(home.qpos[joints], spec.DEFAULT_POSE, atol=1e-6)
    np.testing.assert_allclose(home.ctrl, spec.DEFAULT_POSE, atol=1e-6)


def test_servo_ids_follow_the_joint_names():
    assert len(spec.SERVO_IDS) == len(spec.JOINT_NAMES) == 9
    assert len(set(spec.SERVO_IDS)) == 9 and spec.VALVE_SERVO_ID not in spec.SERVO_IDS
    # ROBEL numbering: finger digit then joint digit, as in the joint names (FFJ10 -> 10).
    assert all(name.endswith(str(servo)) for name, servo in zip(spec.JOINT_NAMES, spec.SERVO_IDS, strict=True))
    assert spec.SPEC.hardware["servo_ids"] == spec.SERVO_IDS


def test_timing_and_scales(model):
    assert model.opt.timestep == pytest.approx(spec.PHYSICS_DT)
    substeps = spec.CONTROL_DT / spec.PHYSICS_DT
    assert substeps == pytest.approx(round(substeps))
    assert (spec.SPEC.action_scale > 0).all()
    # One full action per step stays below the deployment speed clamp.
    assert (spec.SPEC.action_scale / spec.CONTROL_DT <= spec.SPEC.max_joint_speed).all()


def test_scene_has_the_task_objects(model):
    valve = model.joint("valve")
    assert valve.type[0] == mujoco.mjtJoint.mjJNT_HINGE and not valve.limited[0]
    for finger in ("FF", "MF", "TH"):
        assert model.site(f"{finger}_tip").id >= 0
        # Fingertips collide with the valve; nothing else on the claw does.
        tip = model.geom(f"{finger}_tip")
        assert tip.contype[0] & model.geom("valve_spoke0").conaffinity[0]
