"""The torch-free contract shared by training, export and deployment.

What a robot is (:mod:`~toolkit.contract.robot`), what a policy sees
(:mod:`~toolkit.contract.obs_layout`), what a task computes (:mod:`~toolkit.contract.task`,
:mod:`~toolkit.contract.step`), how the sim is randomized (:mod:`~toolkit.contract.dr`), the
per-env random streams (:mod:`~toolkit.contract.rng`) and what an exported policy says about
itself (:mod:`~toolkit.contract.policy`). Every module here imports neither torch nor (at import
time) mujoco, and its functions are written against the array API: numpy on a robot computer,
torch in the trainer, the same code.
"""
