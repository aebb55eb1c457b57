"""Training commands: ``python -m train.dclaw``, ``python -m train.shadow_hand``."""
