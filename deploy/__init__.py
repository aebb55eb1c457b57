"""Deployment: run an exported ONNX policy at control rate (numpy + onnxruntime; never torch or train/).

    python -m deploy.run --policy policy.onnx --backend sim --episodes 10 --log episodes.h5
    python -m deploy.run --policy policy.onnx --backend dclaw --port /dev/ttyUSB0 --log episodes.h5
    python -m deploy.replay episodes.h5 --episode 3 --mode state|actions [--plot replay.png]
    python -m deploy.dynamixel_emulator        # a Dynamixel bus on a pty, for dry runs of --backend dclaw

Modules: ``policy`` (ONNX file + metadata), ``runner`` (the paced control loop, safety clamps,
watchdogs), ``backends`` (``sim``: MuJoCo; ``dclaw_dynamixel``: dynamixel-sdk), ``log`` (crash-safe
HDF5 session log), ``replay``, ``errors`` (exit statuses), ``dynamixel_protocol`` and
``dynamixel_emulator`` (Protocol 2.0), ``testing`` (synthetic ONNX policies). This package
imports nothing itself; ``tests/deploy/test_imports.py`` checks that no module loads torch.
"""
