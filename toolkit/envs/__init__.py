"""Batched environments.

``vec_env`` (VecEnv, torch), ``task`` (the Task protocol, torch-free), ``dr_table`` and
``randomization`` (domain randomization), ``gym_adapter`` (gymnasium single env).
"""
