"""Train a D'Claw policy with PQL: ``python -m train.dclaw --randomize``.

Defaults learn dclaw-turn on a 2-core CPU; see ``--help`` for every option
(``--pql.*`` hyper-parameters, ``--log.*`` logging/evaluation/checkpoints).
"""

from __future__ import annotations

from toolkit.config import EnvConfig, TrainConfig
from train.common import main

DEFAULT = TrainConfig(env=EnvConfig(task="dclaw-turn"))

if __name__ == "__main__":
    raise SystemExit(main(DEFAULT, "dclaw-", __doc__))
