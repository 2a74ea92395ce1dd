"""Rotations as batched torch functions.

Convention: a rotation matrix ``A`` (…, 3, 3) acts on column vectors, so the
coordinates of a structure in the pose ``A`` are ``x @ A.transpose(-1, -2)``
for ``x`` of shape (…, N, 3). Quaternions are scalar-first ``(w, x, y, z)``.
Angles are radians here except in the RELION Euler helpers, whose degrees are
the I/O convention (``rlnAngleRot``, ``rlnAngleTilt``, ``rlnAnglePsi``).
"""

from __future__ import annotations

import torch

__all__ = [
    "random_rotations",
    "random_quaternions",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "relion_euler_to_matrix",
    "matrix_to_relion_euler",
    "rotvec_to_matrix",
    "matrix_to_rotvec",
    "rotation_about_z",
]


def _rot_z(angle_rad: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle_rad), torch.sin(angle_rad)
    o, z = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([c, -s, z, s, c, z, z, z, o], dim=-1).reshape(*c.shape, 3, 3)


def _rot_y(angle_rad: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle_rad), torch.sin(angle_rad)
    o, z = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([c, z, s, z, o, z, -s, z, c], dim=-1).reshape(*c.shape, 3, 3)


def rotation_about_z(angle_rad: torch.Tensor) -> torch.Tensor:
    """In-plane rotation matrices (…, 3, 3) by ``angle_rad`` (…) about the z (beam) axis."""
    return _rot_z(angle_rad)


def random_quaternions(
    n: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``n`` unit quaternions (n, 4), uniform on SO(3) (normalised 4D Gaussians), w ≥ 0."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64, device=device)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    q = torch.where(q[:, :1] < 0, -q, q)
    return q.to(dtype)


def random_rotations(
    n: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``n`` rotation matrices (n, 3, 3) drawn uniformly (Haar measure) from SO(3)."""
    return quaternion_to_matrix(random_quaternions(n, generator, dtype, device))


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (…, 4), scalar first, to rotation matrices (…, 3, 3).

    ``q`` and ``-q`` give the same matrix; ``q`` is normalised first.
    """
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    m = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return m.reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(m: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (…, 3, 3) to unit quaternions (…, 4), scalar first, with w ≥ 0.

    Uses the numerically stable branch (largest of w, x, y, z) per matrix.
    """
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # 4·q_i² for i = w, x, y, z
    four_sq = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22],
        dim=-1,
    )
    # candidate quaternions, each scaled by 4·q_i for its own branch i
    cands = torch.stack(
        [
            torch.stack([four_sq[..., 0], m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, four_sq[..., 1], m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, four_sq[..., 2], m21 + m12], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, four_sq[..., 3]], dim=-1),
        ],
        dim=-2,
    )
    best = four_sq.argmax(dim=-1)
    idx = best[..., None, None].expand(*best.shape, 1, 4)
    q = torch.gather(cands, -2, idx).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.where(q[..., :1] < 0, -q, q)


def relion_euler_to_matrix(
    rot_deg: torch.Tensor, tilt_deg: torch.Tensor, psi_deg: torch.Tensor
) -> torch.Tensor:
    """RELION Euler angles (degrees, ZYZ) to the pose matrices ``A`` (…, 3, 3).

    ``A = Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).as_matrix().T``
    = Rz(−psi)·Ry(−tilt)·Rz(−rot): the matrix that rotates the structure into
    the frame in which it is projected along z.
    """
    rot, tilt, psi = (torch.deg2rad(torch.as_tensor(a)) for a in (rot_deg, tilt_deg, psi_deg))
    rot, tilt, psi = torch.broadcast_tensors(rot, tilt, psi)
    return _rot_z(-psi) @ _rot_y(-tilt) @ _rot_z(-rot)


def matrix_to_relion_euler(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pose matrices ``A`` (…, 3, 3) to RELION (rot, tilt, psi) in degrees.

    tilt ∈ [0, 180]; at tilt 0 or 180 (gimbal lock) psi is set to 0.
    """
    m = a.transpose(-1, -2)  # = Rz(rot) Ry(tilt) Rz(psi)
    cos_tilt = m[..., 2, 2].clamp(-1.0, 1.0)
    tilt = torch.acos(cos_tilt)
    sin_tilt = torch.sqrt(torch.clamp(1 - cos_tilt * cos_tilt, min=0.0))
    regular = sin_tilt > 1e-6
    rot = torch.where(regular, torch.atan2(m[..., 1, 2], m[..., 0, 2]), torch.zeros_like(tilt))
    psi = torch.where(regular, torch.atan2(m[..., 2, 1], -m[..., 2, 0]), torch.zeros_like(tilt))
    # gimbal lock: tilt≈0 → M = Rz(rot+psi); tilt≈180 → M00 = −cos(rot−psi), M10 = −sin(rot−psi)
    rot_up = torch.atan2(m[..., 1, 0], m[..., 0, 0])
    rot_down = torch.atan2(-m[..., 1, 0], -m[..., 0, 0])
    rot = torch.where(regular, rot, torch.where(cos_tilt > 0, rot_up, rot_down))
    return torch.rad2deg(rot), torch.rad2deg(tilt), torch.rad2deg(psi)


def rotvec_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """Rotation vectors (…, 3) (axis × angle in radians) to matrices (…, 3, 3) (Rodrigues).

    cryoSPARC stores ``alignments3D/pose`` as such a vector; its pose matrix is
    ``rotvec_to_matrix(pose).T``.
    """
    theta = v.norm(dim=-1, keepdim=True)
    half = 0.5 * theta
    # sin(θ/2)/θ with its limit 1/2 at θ → 0
    small = theta < 1e-6
    safe_theta = torch.where(small, torch.ones_like(theta), theta)
    scale = torch.where(small, 0.5 - theta * theta / 48.0, torch.sin(half) / safe_theta)
    q = torch.cat([torch.cos(half), v * scale], dim=-1)
    return quaternion_to_matrix(q)


def matrix_to_rotvec(m: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (…, 3, 3) to rotation vectors (…, 3), angle in [0, π]."""
    q = matrix_to_quaternion(m)
    w = q[..., :1].clamp(-1.0, 1.0)
    xyz = q[..., 1:]
    sin_half = xyz.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(sin_half, w)
    small = sin_half < 1e-7
    scale = torch.where(small, 2.0 / w.clamp_min(1e-12), angle / torch.where(small, torch.ones_like(sin_half), sin_half))
    return xyz * scale

