"""Quaternion math written against the array API: numpy (deployment) and torch (training).

Quaternions are ``(..., 4)`` arrays in MuJoCo's order ``(w, x, y, z)``; every function
broadcasts over the leading dimensions and keeps the input's namespace, dtype and device.
A quaternion and its negative are the same rotation (double cover); functions that return
an orientation for an observation canonicalise it with :func:`quat_canonical`.
"""

from __future__ import annotations

import math

from array_api_compat import array_namespace


def quat_mul(a, b):
    """Hamilton product ``a * b`` (rotate by ``b`` first, then by ``a``), (..., 4)."""
    xp = array_namespace(a, b)
    aw, ax, ay, az = (a[..., i] for i in range(4))
    bw, bx, by, bz = (b[..., i] for i in range(4))
    return xp.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], axis=-1)


def quat_conjugate(q):
    """Conjugate (the inverse of a unit quaternion), (..., 4)."""
    xp = array_namespace(q)
    return xp.concat([q[..., :1], -q[..., 1:]], axis=-1)


def quat_normalize(q, eps: float = 1e-12):
    """``q / |q|``, (..., 4); ``eps`` guards the zero quaternion."""
    xp = array_namespace(q)
    return q / xp.clip(xp.linalg.vector_norm(q, axis=-1, keepdims=True), eps, None)


def quat_canonical(q):
    """The sign of ``q`` with ``w >= 0``, (..., 4): one representative per rotation, so an
    observation does not depend on which of ``q``/``-q`` a simulator or tracker reports."""
    xp = array_namespace(q)
    return xp.where(q[..., :1] < 0, -q, q)


def quat_angle(q):
    """Rotation angle of ``q`` in [0, pi], (...,).

    ``2 atan2(|xyz|, |w|)`` is exact near 0 and pi (unlike ``2 acos(w)``), treats ``q`` and
    ``-q`` alike and does not need ``q`` normalised (noisy observations).
    """
    xp = array_namespace(q)
    return 2.0 * xp.atan2(xp.linalg.vector_norm(q[..., 1:], axis=-1), xp.abs(q[..., 0]))


def quat_distance(a, b):
    """Angle in [0, pi] of the rotation between orientations ``a`` and ``b``, (...,)."""
    return quat_angle(quat_mul(a, quat_conjugate(b)))


def quat_from_axis_angle(axis, angle):
    """Quaternions of rotations by ``angle`` (...,) rad about unit ``axis`` (..., 3)."""
    xp = array_namespace(axis, angle)
    half = angle[..., None] / 2
    return xp.concat([xp.cos(half), xp.sin(half) * axis], axis=-1)


def axis_from_uniform(u):
    """Unit vectors uniform on the sphere from uniform samples ``u`` in [0, 1), (..., 2) -> (..., 3)."""
    xp = array_namespace(u)
    z = 2.0 * u[..., 0] - 1.0
    phi = 2.0 * math.pi * u[..., 1]
    r = xp.sqrt(xp.clip(1.0 - z * z, 0.0, None))
    return xp.stack([r * xp.cos(phi), r * xp.sin(phi), z], axis=-1)
