"""Train a Shadow Hand policy with PQL: ``python -m train.shadow_hand --randomize``.

The reorientation task gives the V-learner privileged critic observations (velocities,
fingertips) while the policy, the part that is exported, sees only what a real hand senses.
Progress is best read from ``eval_consecutive_successes`` (goals reached per episode).
See ``--help`` for every option.
"""

from __future__ import annotations

from toolkit.config import EnvConfig, TrainConfig
from train.common import main

DEFAULT = TrainConfig(env=EnvConfig(task="shadow_hand-reorient"))

if __name__ == "__main__":
    raise SystemExit(main(DEFAULT, "shadow_hand-", __doc__))
