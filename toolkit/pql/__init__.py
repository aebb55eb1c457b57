"""Parallel Q-Learning: an Actor, a V-learner and a P-learner at controlled speed ratios.

``roles`` (the role table, sizes, networks), ``actor``, ``learner`` (what the V- and P-learner
share), ``v_learner``, ``p_learner``; ``shared`` (counters, weight boards and the replay ring, on
the learners' device); ``ratio`` (speed-ratio gates); ``nstep`` (n-step transitions);
``placement`` (the Placement interface: sequential and process placements), ``ray_placement``;
``trainer`` (run directory, evaluation, checkpoints and the main loop).
"""
