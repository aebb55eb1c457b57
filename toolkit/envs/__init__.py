"""Batched environments.

``vec_env`` (VecEnv: a task of :mod:`toolkit.contract.task` on a batched simulator, torch),
``gym_adapter`` (gymnasium single env; registered ids in ``robots.gym``). The task protocol, the
step function, domain randomization and the per-env random streams live in
:mod:`toolkit.contract`, shared with deployment.
"""
