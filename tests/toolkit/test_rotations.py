"""toolkit.rotations against MuJoCo's mju_* quaternion functions, on numpy and torch."""

import math

import mujoco
import numpy as np
import pytest
import torch

from toolkit.rotations import (
    axis_from_uniform,
    quat_angle,
    quat_canonical,
    quat_conjugate,
    quat_distance,
    quat_from_axis_angle,
    quat_mul,
    quat_normalize,
)

BACKENDS = [np.asarray, torch.as_tensor]


def _unit_quats(n: int, seed: int) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def _np(x) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@pytest.mark.parametrize("wrap", BACKENDS)
def test_mul_and_conjugate_match_mujoco(wrap):
    a, b = _unit_quats(50, 0), _unit_quats(50, 1)
    product, conjugate = _np(quat_mul(wrap(a), wrap(b))), _np(quat_conjugate(wrap(a)))
    for i in range(len(a)):
        expected = np.zeros(4)
        mujoco.mju_mulQuat(expected, a[i], b[i])
        np.testing.assert_allclose(product[i], expected, atol=1e-12)
        mujoco.mju_negQuat(expected, a[i])
        np.testing.assert_allclose(conjugate[i], expected, atol=1e-12)


@pytest.mark.parametrize("wrap", BACKENDS)
def test_axis_angle_matches_mujoco(wrap):
    rng = np.random.default_rng(2)
    axis = rng.normal(size=(20, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    angle = rng.uniform(-2 * math.pi, 2 * math.pi, size=20)
    q = _np(quat_from_axis_angle(wrap(axis), wrap(angle)))
    for i in range(20):
        expected = np.zeros(4)
        mujoco.mju_axisAngle2Quat(expected, axis[i], angle[i])
        np.testing.assert_allclose(q[i], expected, atol=1e-12)


@pytest.mark.parametrize("wrap", BACKENDS)
def test_distance_is_the_angle_of_mju_subQuat(wrap):
    a, b = _unit_quats(100, 3), _unit_quats(100, 4)
    distance = _np(quat_distance(wrap(a), wrap(b)))
    for i in range(len(a)):
        velocity = np.zeros(3)
        mujoco.mju_subQuat(velocity, a[i], b[i])  # axis * angle of the rotation from b to a
        assert distance[i] == pytest.approx(np.linalg.norm(velocity), abs=1e-9)
    assert np.all((distance >= 0) & (distance <= math.pi))


def test_angle_is_exact_near_zero_and_pi_and_ignores_sign_and_scale():
    axis = np.array([[0.0, 0.6, 0.8]])
    for angle in (1e-7, 1e-3, 1.0, math.pi - 1e-7, math.pi):
        q = quat_from_axis_angle(axis, np.array([angle]))
        assert quat_angle(q)[0] == pytest.approx(angle, rel=1e-9)
        assert quat_angle(-q)[0] == pytest.approx(angle, rel=1e-9)
        assert quat_angle(3.0 * q)[0] == pytest.approx(angle, rel=1e-9)
    # Past pi the shorter way round is reported.
    q = quat_from_axis_angle(axis, np.array([1.5 * math.pi]))
    assert quat_angle(q)[0] == pytest.approx(0.5 * math.pi)


def test_canonical_and_normalize():
    q = _unit_quats(200, 5)
    canonical = quat_canonical(q)
    assert np.all(canonical[:, 0] >= 0)
    np.testing.assert_allclose(quat_distance(canonical, q), 0.0, atol=1e-7)
    np.testing.assert_allclose(np.abs(canonical), np.abs(q))
    np.testing.assert_allclose(quat_normalize(2.5 * q), q, atol=1e-15)
    assert np.all(np.isfinite(quat_normalize(np.zeros((1, 4)))))


def test_axis_from_uniform_is_uniform_on_the_sphere():
    u = np.random.default_rng(6).random((40000, 2))
    v = axis_from_uniform(u)
    np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(v.mean(axis=0), 0.0, atol=0.02)
    # Uniform on the sphere: E[v v^T] = I / 3.
    np.testing.assert_allclose(v.T @ v / len(v), np.eye(3) / 3, atol=0.01)


def test_numpy_and_torch_agree():
    a, b = _unit_quats(30, 7), _unit_quats(30, 8)
    u = np.random.default_rng(9).random((30, 2))
    ta, tb, tu = torch.as_tensor(a), torch.as_tensor(b), torch.as_tensor(u)
    np.testing.assert_allclose(quat_mul(ta, tb).numpy(), quat_mul(a, b), atol=1e-15)
    np.testing.assert_allclose(quat_distance(ta, tb).numpy(), quat_distance(a, b), atol=1e-15)
    np.testing.assert_allclose(axis_from_uniform(tu).numpy(), axis_from_uniform(u), atol=1e-15)
    assert quat_mul(ta.float(), tb.float()).dtype == torch.float32
