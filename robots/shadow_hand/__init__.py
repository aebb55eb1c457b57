"""Shadow Dexterous Hand (24 joints, 20 actuated; MJCF from gymnasium-robotics) and its tasks."""
