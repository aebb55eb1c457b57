"""Robot backends behind one interface (:class:`deploy.backends.base.Backend`).

``sim`` (:mod:`deploy.backends.sim`, MuJoCo) and ``dclaw`` (:mod:`deploy.backends.dclaw_dynamixel`,
dynamixel-sdk). Import the one you need; this package imports nothing so that the hardware path
never pays for MuJoCo and vice versa.
"""
