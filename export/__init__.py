"""Export of trained policies: ``python -m export.onnx runs/<name> --out policy.onnx``."""
