"""ROBEL D'Claw: three fingers x three Dynamixel joints, and its tasks."""
