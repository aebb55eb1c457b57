"""Deployment: run an exported ONNX policy at control rate (numpy + onnxruntime; never torch or train/)."""
