"""Batched environments.

``vec_env`` (VecEnv, torch), ``task`` (the Task protocol, torch-free), ``dr_table`` and
``randomization`` (domain randomization), ``rng`` (one random stream per env),
``gym_adapter`` (gymnasium single env; registered ids in ``robots.gym``).
"""
