"""Shadow Dexterous Hand constants: joints, coupling, limits, default pose, rates (tested
against the compiled model in tests/robots/shadow_hand/test_spec.py).

The MJCF is the one shipped inside the installed ``gymnasium-robotics`` package
(``gymnasium_robotics/envs/assets/hand/``); :func:`hand_assets_dir` finds it without
importing that package. Imports neither torch nor mujoco: deployment code uses it.

Joint naming follows that MJCF (model names carry the ``robot0:`` prefix): per finger
J3 abduction, J2 proximal flexion, J1 middle, J0 distal (the Shadow Robot drivers number
the same joints one higher: FFJ4..FFJ1, WRJ2..WRJ1). 24 joints, 20 position actuators:
the distal joints FFJ0, MFJ0, RFJ0, LFJ0 have no actuator; a limited fixed tendon
(``robot0:T_<F>J1c``: 0.00705 J0 - 0.00805 J1 in [-0.001, 0.001]) makes each follow its
J1, J0 = COUPLING_RATIO * J1 +- 0.14 rad of slack, as the real hand's coupled J1/J2 tendon does.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from toolkit.contract.robot import RobotSpec

#: Prefix of every robot element's name in the gymnasium-robotics MJCF.
MODEL_PREFIX = "robot0:"

#: Actuated joints in actuator order (the model's actuators are renamed to these names).
JOINT_NAMES = (
    "WRJ1", "WRJ0",
    "FFJ3", "FFJ2", "FFJ1",
    "MFJ3", "MFJ2", "MFJ1",
    "RFJ3", "RFJ2", "RFJ1",
    "LFJ4", "LFJ3", "LFJ2", "LFJ1",
    "THJ4", "THJ3", "THJ2", "THJ1", "THJ0",
)
#: The unactuated distal joint of each finger -> the joint it is coupled to.
COUPLED_JOINTS = {"FFJ0": "FFJ1", "MFJ0": "MFJ1", "RFJ0": "RFJ1", "LFJ0": "LFJ1"}
#: All 24 hand joints in model order.
ALL_JOINT_NAMES = (
    "WRJ1", "WRJ0",
    "FFJ3", "FFJ2", "FFJ1", "FFJ0",
    "MFJ3", "MFJ2", "MFJ1", "MFJ0",
    "RFJ3", "RFJ2", "RFJ1", "RFJ0",
    "LFJ4", "LFJ3", "LFJ2", "LFJ1", "LFJ0",
    "THJ4", "THJ3", "THJ2", "THJ1", "THJ0",
)
#: J0 / J1 held by the coupling tendons (ratio of their joint coefficients), until J0 hits
#: its limit.
COUPLING_RATIO = 0.00805 / 0.00705
#: Fingertip sites (FF, MF, RF, LF, TH), model names.
FINGERTIP_SITES = tuple(f"{MODEL_PREFIX}S_{f}tip" for f in ("ff", "mf", "rf", "lf", "th"))

#: Actuator ctrlranges (= joint ranges), rad, in JOINT_NAMES order.
JOINT_LOW = np.array([
    -0.489, -0.698,
    -0.349, 0.0, 0.0,
    -0.349, 0.0, 0.0,
    -0.349, 0.0, 0.0,
    0.0, -0.349, 0.0, 0.0,
    -1.047, 0.0, -0.209, -0.524, -1.571,
])
JOINT_HIGH = np.array([
    0.14, 0.489,
    0.349, 1.571, 1.571,
    0.349, 1.571, 1.571,
    0.349, 1.571, 1.571,
    0.785, 0.349, 1.571, 1.571,
    1.047, 1.222, 0.209, 0.524, 0.0,
])
#: Open flat hand, palm up (the gymnasium hand's initial pose); the cube rests on the palm.
DEFAULT_POSE = np.zeros(len(JOINT_NAMES))

#: 20 Hz control: inside the design's 20-60 Hz and cheap on a CPU (10 physics steps per
#: action). The gymnasium hand steps 2 ms; 5 ms keeps contact penetration (~2 mm at the 1st
#: percentile under random actions) and the tendon coupling as at 2 ms, at 2.5x less cost.
PHYSICS_DT = 0.005
CONTROL_DT = 0.05
#: rad of target change per unit action per step: 2 rad/s at 20 Hz, a flexion range in 0.8 s.
ACTION_SCALE = 0.1


def hand_assets_dir() -> Path:
    """``gymnasium_robotics/envs/assets/hand`` of the installed package (not imported: its
    import registers environments and prints warnings)."""
    found = importlib.util.find_spec("gymnasium_robotics")
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError("the Shadow Hand model ships with gymnasium-robotics: "
                                  "pip install 'gymnasium-robotics>=1.3'")
    path = Path(next(iter(found.submodule_search_locations))) / "envs" / "assets" / "hand"
    if not (path / "manipulate_block.xml").is_file():
        raise FileNotFoundError(f"gymnasium-robotics is installed but {path}/manipulate_block.xml is missing")
    return path


SPEC = RobotSpec(
    name="shadow_hand",
    joint_names=JOINT_NAMES,
    joint_low=JOINT_LOW,
    joint_high=JOINT_HIGH,
    default_pose=DEFAULT_POSE,
    action_scale=np.full(len(JOINT_NAMES), ACTION_SCALE),
    control_dt=CONTROL_DT,
    max_joint_speed=3.0,
    hardware={"coupled_joints": COUPLED_JOINTS, "coupling_ratio": COUPLING_RATIO},
)
