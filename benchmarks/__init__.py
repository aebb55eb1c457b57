"""Benchmarks that print JSON: ``python -m benchmarks.<name> --help``."""
