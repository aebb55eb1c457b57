"""Robot-agnostic machinery of the sim-to-real toolkit.

Importing ``toolkit`` (or ``toolkit.robot`` / ``toolkit.obs_layout``) imports neither torch
nor mujoco: the deployment side relies on that.
"""

__version__ = "0.1.0"
