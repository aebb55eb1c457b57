"""Parallel Q-Learning: an Actor, a V-learner and a P-learner at controlled speed ratios.

``actor``, ``v_learner``, ``p_learner``: the three roles; ``shared``: counters, weight
boards and the replay ring in shared memory; ``ratio``: speed-ratio gates; ``nstep``:
n-step transitions; ``trainer``: the process, sequential and Ray placements of the roles.
"""
