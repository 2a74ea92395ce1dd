"""Rotation conventions against scipy (an independent reference) and invariants."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryoconf.imaging import rotations as rot


@pytest.fixture
def euler_deg():
    rng = np.random.default_rng(0)
    ang = rng.uniform(-180, 180, (200, 3))
    ang[:, 1] = rng.uniform(0, 180, 200)
    return ang


def test_relion_euler_matches_scipy_definition(euler_deg):
    expected = Rotation.from_euler("ZYZ", euler_deg, degrees=True).as_matrix().transpose(0, 2, 1)
    got = rot.relion_euler_to_matrix(*torch.tensor(euler_deg).T).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_relion_euler_round_trip_including_gimbal_lock(euler_deg):
    euler = np.concatenate([euler_deg, [[30, 0, 40], [30, 180, 40], [-170, 0.0, 0], [10, 1e-9, 5]]])
    a = rot.relion_euler_to_matrix(*torch.tensor(euler).T)
    back = rot.relion_euler_to_matrix(*rot.matrix_to_relion_euler(a))
    np.testing.assert_allclose(back.numpy(), a.numpy(), atol=1e-9)
    tilt = rot.matrix_to_relion_euler(a)[1]
    assert torch.all((tilt >= 0) & (tilt <= 180))


def test_quaternion_round_trip_and_sign_invariance():
    q = rot.random_quaternions(500, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    m = rot.quaternion_to_matrix(q)
    np.testing.assert_allclose(rot.quaternion_to_matrix(-q).numpy(), m.numpy(), atol=1e-14)
    np.testing.assert_allclose(rot.matrix_to_quaternion(m).numpy(), q.numpy(), atol=1e-12)
    scipy_m = Rotation.from_quat(q[:, [1, 2, 3, 0]].numpy()).as_matrix()  # scipy is scalar-last
    np.testing.assert_allclose(m.numpy(), scipy_m, atol=1e-12)


def test_rotvec_matches_scipy():
    v = np.random.default_rng(2).normal(size=(300, 3)) * 1.5
    v = np.concatenate([v, [[0, 0, 0], [1e-9, 0, 0], [np.pi, 0, 0]]])
    m = rot.rotvec_to_matrix(torch.tensor(v))
    np.testing.assert_allclose(m.numpy(), Rotation.from_rotvec(v).as_matrix(), atol=1e-12)
    back = rot.matrix_to_rotvec(m)
    np.testing.assert_allclose(rot.rotvec_to_matrix(back).numpy(), m.numpy(), atol=1e-10)


def test_random_rotations_are_uniform_on_so3():
    m = rot.random_rotations(20000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(m @ m.transpose(1, 2), eye.expand_as(m), atol=1e-12)
    assert torch.allclose(torch.det(m), torch.ones(len(m), dtype=torch.float64), atol=1e-12)
    # Haar measure: the rotated z axis is uniform on S² (each coordinate uniform in [−1, 1], mean 0)
    z = m[:, :, 2]
    assert z.mean(0).abs().max() < 0.02
    hist = torch.histc(z[:, 2], bins=10, min=-1, max=1) / len(z)
    assert (hist - 0.1).abs().max() < 0.01
    # rotation angle density ∝ (1 − cos ω)/π: mean angle = π/2 + 2/π
    angle = rot.matrix_to_rotvec(m).norm(dim=-1)
    assert abs(angle.mean().item() - (np.pi / 2 + 2 / np.pi)) < 0.02
