"""Robot-agnostic machinery of the sim-to-real toolkit.

Importing ``toolkit`` or ``toolkit.contract`` imports neither torch
nor mujoco: the deployment side relies on that.
"""

__version__ = "0.1.0"
