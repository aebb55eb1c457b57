"""D'Claw constants: joints, limits, default pose, servo IDs (tested against the MJCF).

Imports neither torch nor mujoco: the deployment runner and the hardware backend use it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from toolkit.contract.robot import RobotSpec

ASSETS = Path(__file__).parent / "assets"
TURN_XML = ASSETS / "dclaw_turn.xml"

#: Fingers FF, MF, TH; per finger base (abduction), middle and tip joints.
JOINT_NAMES = ("FFJ10", "FFJ11", "FFJ12", "MFJ20", "MFJ21", "MFJ22", "THJ30", "THJ31", "THJ32")
#: Dynamixel IDs of the joints above, in the same order (ROBEL numbering).
SERVO_IDS = (10, 11, 12, 20, 21, 22, 30, 31, 32)
#: Dynamixel ID of the servo under the valve, read (torque off) for the valve angle.
VALVE_SERVO_ID = 50
#: Direction of each joint's servo: +1 where positive ticks turn the joint the model's positive
#: way (every servo of a ROBEL D'Claw build), -1 for a servo mounted mirrored.
JOINT_SIGNS = (1,) * 9
#: Direction of the valve servo's reading.
VALVE_SIGN = 1

_FINGER_LOW = (-0.48, -math.pi / 3, -math.pi / 2)
_FINGER_HIGH = (0.48, math.pi / 3, math.pi / 2)
JOINT_LOW = np.array(_FINGER_LOW * 3)
JOINT_HIGH = np.array(_FINGER_HIGH * 3)
#: ROBEL's reset pose: fingers raised clear of the valve.
DEFAULT_POSE = np.array((0.0, -math.pi / 3, math.pi / 3) * 3)

CONTROL_DT = 0.1  # 10 Hz, as ROBEL (40 x 2.5 ms); our MJCF steps 5 ms physics.
PHYSICS_DT = 0.005

SPEC = RobotSpec(
    name="dclaw",
    joint_names=JOINT_NAMES,
    joint_low=JOINT_LOW,
    joint_high=JOINT_HIGH,
    default_pose=DEFAULT_POSE,
    action_scale=np.full(9, 0.15),
    control_dt=CONTROL_DT,
    max_joint_speed=3.0,
    hardware={"servo_ids": SERVO_IDS, "valve_servo_id": VALVE_SERVO_ID, "joint_signs": JOINT_SIGNS,
              "valve_sign": VALVE_SIGN},
)
