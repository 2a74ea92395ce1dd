"""Projection of Gaussian pseudo-atoms along z onto the image grid (real space, exact).

An isotropic 3D Gaussian of amplitude ``a`` (its integral) and standard deviation
``σ`` (Å) projects along z to the 2D Gaussian ``a/(2πσ²)·exp(−r²/2σ²)`` (per Å²),
which factorises into x and y profiles. Two samplings of it are offered:

- ``"point"``: the value at each pixel centre;
- ``"pixel"``: the mean over each pixel's area (differences of erf), so that
  ``image.sum()·apix² = Σ a`` holds exactly for a contained particle, at any σ.

Algorithm (cost O(B·N·(T + 2r)²) with r ≈ 6σ, never a B×N×box×box tensor):
the image is cut into fixed T×T tiles and every atom is assigned to the tile
holding its centre. A tile's window is its T pixels plus a halo of r ≥ 6σ on
each side, so the tile image is exactly ``Gy (S×M) · diag(a) · Gx (M×S)``
(S = T + 2r) over the tile's M atoms, with the 1D profiles evaluated only in
that window. (particle, tile) pairs are grouped by padded atom count and each
group is one batched matmul; windows sit at fixed positions, so the
overlap-add is a short loop of slice additions. Profiles are truncated at 6σ
(relative error < 2·10⁻⁹ of the integral), so the result is the exact
projection to float precision. Particles are processed in chunks sorted by σ,
with working buffers reused across chunks (see ``RenderWorkspace``).
"""

from __future__ import annotations

import math

import torch

from cryoconf.errors import InputError
from cryoconf.imaging import native_projector

__all__ = ["project_gaussians", "rotate_coords"]

_N_SIGMA = 6.0
_ELEMENT_BUDGET = 6_000_000  # floats of working memory per chunk (a few MB: stays in cache, no page faults)
_ELEMENT_BUDGET_GPU = 2**28  # on a GPU: 1 GiB of float32 per chunk (few launches and host syncs per batch)
# exp(−z²) is evaluated with z² clamped at 40: beyond it the profile (< 4·10⁻¹⁸ of its peak, i.e. > 8.9σ,
# outside the 6σ truncation) is replaced by e⁻⁴⁰, far below float precision. It keeps exp off its slow
# underflow path (≈ 25× slower on x86) and products of two profiles out of the denormal range.
_Z2_MAX = 40.0
_NATIVE_CHUNK = 32  # particles per chunk when the compiled kernel projects


def rotate_coords(coords_A: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Coordinates in the pose ``A``: ``coords @ Aᵀ``; coords (N,3) or (B,N,3), rotations (B,3,3)."""
    return coords_A @ rotations.transpose(-1, -2)


def _as_bn(value, b: int, n: int, name: str, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t.expand(b, n)
    if t.ndim == 1:
        if t.shape[0] == n:
            return t[None].expand(b, n)
        if t.shape[0] == b and n != b:
            return t[:, None].expand(b, n)
        raise InputError(f"{name} has shape {tuple(t.shape)}; expected (N,)=({n},), (B,N)=({b},{n}), (B,1) or a scalar")
    if t.ndim == 2 and t.shape[0] in (1, b) and t.shape[1] in (1, n):
        return t.expand(b, n)
    raise InputError(f"{name} has shape {tuple(t.shape)}; expected (N,)=({n},), (B,N)=({b},{n}), (B,1) or a scalar")


def _profile(points: torch.Tensor, centre: torch.Tensor, k: torch.Tensor, method: str, fast: bool,
             out: torch.Tensor | None = None, log_amp: torch.Tensor | None = None) -> torch.Tensor:
    """Unnormalised 1D profiles (P, S) at ``points`` (S,) [or pixel edges (S+1,)] in px.

    ``centre`` and ``k`` = 1/(√2·σ_px) are (P, 1). ``"point"``: exp(log_amp − (k(p − c))²)
    (the 1/√π per axis is folded into the amplitudes by the caller); ``"pixel"``: erf
    differences over consecutive edges (the ½ per axis folded in likewise).
    ``fast``: no autograd, so intermediates are updated in place in ``out``.
    """
    if fast:
        z = torch.sub(points, centre, out=out).mul_(k)
        if method == "point":
            z = z.square_()
            z = torch.sub(log_amp, z, out=z) if log_amp is not None else z.neg_()
            return z.clamp_min_(-_Z2_MAX).exp_()
        e = z.erf_()
    else:
        z = (points - centre) * k
        if method == "point":
            lead = log_amp if log_amp is not None else 0.0
            return torch.exp((lead - z.square()).clamp_min(-_Z2_MAX))
        e = torch.erf(z)
    return e[:, 1:] - e[:, :-1]


_CLASS_CACHE: dict = {}


def _size_classes(n: int, device) -> torch.Tensor:
    """Padded atom counts per (particle, tile) pair: 0, 1..8, then steps of ≈ 25 % (multiples of 4)."""
    key = (n, str(device))
    if key not in _CLASS_CACHE:
        sizes = [0]
        s = 1
        while True:
            sizes.append(s)
            if s >= n:
                break
            s = s + 1 if s < 8 else 4 * int(math.ceil(1.25 * s / 4))
        _CLASS_CACHE[key] = torch.tensor(sizes, dtype=torch.long, device=device)
    return _CLASS_CACHE[key]


def _buffer(ws: dict | None, name: str, shape, like: torch.Tensor) -> torch.Tensor:
    """A working tensor of ``shape``: a view into a buffer of ``ws`` reused across chunks (no page faults)."""
    numel = math.prod(shape)
    if ws is None:
        return like.new_empty(shape)
    buf = ws.get(name)
    if buf is None or buf.numel() < numel:
        buf = like.new_empty(max(numel, int(1.25 * numel) if buf is not None else numel))
        ws[name] = buf
    return buf[:numel].view(shape)


def _tile_size(r: int) -> int:
    """Tile edge (px) for halo r: large enough that halos do not dominate, small enough for short profiles."""
    return 16 if r <= 12 else 24


def _project_chunk(cx, cy, amp, sig, box: int, method: str, ws: dict | None = None) -> torch.Tensor:
    """Images (b, box, box) from centres in pixel-index units; ``amp`` already normalised.

    ``sig`` (b, 1) or (b, n) in px. The image is cut into fixed T×T tiles; every atom
    belongs to the tile holding its centre (clamped to the grid: atoms outside the box
    still reach only pixels inside that tile's window). A tile's window spans its T
    rows/columns plus a halo of r ≥ 6σ on each side (S = T + 2r), so the tile image is
    the exact product ``Gy (S×M) · Gx (M×S)`` of the y and x profiles of its M atoms.
    (particle, tile) pairs are grouped by atom count (padded to a few size classes,
    zero amplitude for padding) and each class is one batched matmul; the tile windows
    sit at fixed positions, so the overlap-add is a short loop of slice additions.
    """
    b, n = cx.shape
    dev, dt = cx.device, cx.dtype
    pixel = method == "pixel"
    fast = not (torch.is_grad_enabled() and any(t.requires_grad for t in (cx, cy, amp, sig)))
    r = min(int(math.ceil(_N_SIGMA * float(sig.detach().max()))) + 1, box + 1)
    T = min(_tile_size(r), box)
    nt = -(-box // T)
    S = T + 2 * r
    # tile of each atom and its position relative to the tile origin (px)
    tx = torch.div(torch.floor(cx.detach()), T, rounding_mode="floor").clamp_(0, nt - 1)
    ty = torch.div(torch.floor(cy.detach()), T, rounding_mode="floor").clamp_(0, nt - 1)
    fx = (cx - tx * T).reshape(-1)
    fy = (cy - ty * T).reshape(-1)
    n_pairs = b * nt * nt
    key = ((torch.arange(b, device=dev)[:, None] * nt + ty.long()) * nt + tx.long()).reshape(-1)
    counts = torch.bincount(key, minlength=n_pairs)
    table = _size_classes(n, dev)
    cls = torch.searchsorted(table, counts)
    size = table[cls]
    pair_order = torch.argsort(cls, stable=True)  # empty pairs first, then by size class
    sorted_size = size[pair_order]
    pad_start = torch.empty_like(size).scatter_(0, pair_order, torch.cumsum(sorted_size, 0) - sorted_size)
    n_empty = int((counts == 0).sum())
    n_full = n_pairs - n_empty
    # slot of each pair in the class-ordered output; empty pairs read the zero slot n_full
    slot = torch.empty_like(size).scatter_(0, pair_order, torch.arange(-n_empty, n_full, device=dev))
    slot = torch.where(counts > 0, slot, torch.full_like(slot, n_full))
    # padded position of each atom: pair start + rank inside its pair
    a_order = torch.argsort(key, stable=True)
    s_key = key[a_order]
    atom_start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(b * n, device=dev) - atom_start[s_key]
    total = int(sorted_size.sum())
    src = torch.full((total,), b * n, dtype=torch.long, device=dev)  # b·n: a dummy atom of zero amplitude
    src.scatter_(0, pad_start[s_key] + rank, a_order)
    ws = ws if fast else None
    n_pts = S + (1 if pixel else 0)
    grid = torch.arange(n_pts, device=dev, dtype=dt) - (r + (0.5 if pixel else 0.0))
    k = (1.0 / math.sqrt(2.0)) / sig
    if fast and method == "point":
        # one gather of (y, x, k, log a) per padded slot (the dummy row: zero amplitude), then the y and x
        # profiles as one (2·total, S) array: exp(lead − (k(p − c))²), lead = log a for y rows, 0 for x rows;
        # zero-amplitude padding → e^−40·e^−40, negligible
        table = torch.empty(b * n + 1, 4, dtype=dt, device=dev)
        table[:-1, 0] = fy
        table[:-1, 1] = fx
        table[:-1, 2] = k.expand(b, n).reshape(-1)
        torch.log(amp.reshape(-1), out=table[:-1, 3])
        table[-1] = table.new_tensor([0.0, 0.0, 1.0, -math.inf])
        packed = table.index_select(0, src).t_()  # (4, total)
        cen = packed[:2].reshape(-1, 1)
        kk = packed[2:3].expand(2, total).reshape(-1, 1)
        lead = torch.cat([packed[3], packed.new_zeros(total)])[:, None]
        g2 = _buffer(ws, "g2", (2 * total, n_pts), cx)
        z = torch.sub(grid, cen, out=g2).mul_(kk).square_()
        torch.sub(lead, z, out=z).clamp_min_(-_Z2_MAX).exp_()
        gy, gx = g2[:total], g2[total:]
    else:
        zero = cx.new_zeros(1)
        k = k.expand(b, n).reshape(-1)
        kp = torch.cat([k, k.new_ones(1)])[src][:, None]
        fxp = torch.cat([fx, zero])[src][:, None]
        fyp = torch.cat([fy, zero])[src][:, None]
        ap = torch.cat([amp.reshape(-1), zero])[src][:, None]
        gy = _profile(grid, fyp, kp, method, fast, _buffer(ws, "gy", (total, n_pts), cx))
        gy = gy.mul_(ap) if fast else gy * ap
        gx = _profile(grid, fxp, kp, method, fast, _buffer(ws, "gx", (total, n_pts), cx))
    # one batched matmul per size class: (P, S, M) @ (P, M, S)
    sizes, n_per = torch.unique_consecutive(sorted_size[n_empty:], return_counts=True)
    tiles = _buffer(ws, "tiles", (n_full + 1, S, S), cx) if fast else None
    parts = []
    a0 = p0 = 0
    for m, p in zip(sizes.tolist(), n_per.tolist()):
        a1 = a0 + p * m
        ga = gy[a0:a1].view(p, m, S).transpose(1, 2)
        gb = gx[a0:a1].view(p, m, S)
        if fast:
            torch.bmm(ga, gb, out=tiles[p0:p0 + p])
        else:
            parts.append(torch.bmm(ga, gb))
        a0, p0 = a1, p0 + p
    if fast:
        tiles[n_full].zero_()
    else:
        parts.append(cx.new_zeros(1, S, S))
        tiles = torch.cat(parts, 0)
    slot = slot.view(b, nt, nt)
    # overlap-add at fixed positions: tile columns into row strips, strips into the canvas
    width = nt * T + 2 * r
    if fast:
        strips = _buffer(ws, "strips", (b, nt, S, width), cx).zero_()
        col = _buffer(ws, "col", (b * nt, S, S), cx)
        canvas = _buffer(ws, "canvas", (b, width, width), cx).zero_()
        for j in range(nt):
            torch.index_select(tiles, 0, slot[:, :, j].reshape(-1), out=col)
            strips[..., j * T:j * T + S] += col.view(b, nt, S, S)
    else:
        strips = cx.new_zeros(b, nt, S, width)
        canvas = cx.new_zeros(b, width, width)
        for j in range(nt):
            strips[..., j * T:j * T + S] += tiles[slot[:, :, j]]
    for i in range(nt):
        canvas[:, i * T:i * T + S] += strips[:, i]
    return canvas[:, r:r + box, r:r + box]


class _Prepared:
    """Validated projector inputs: centres (px), normalised amplitudes, σ (px) and the chunk plan."""

    __slots__ = ("cx", "cy", "amp", "sig_px", "box", "method", "bsz", "n", "chunk_size", "order",
                 "sorted_needed", "atom_chunk", "native")


def _prepare_projection(coords_A, amplitudes, sigmas_A, box, apix_A, rotations, shifts_A, method, chunk_size) -> _Prepared:
    chunk_size_arg = chunk_size
    if method not in ("point", "pixel"):
        raise InputError(f"projector method {method!r} is unknown; use 'point' or 'pixel'")
    if box < 1 or apix_A <= 0:
        raise InputError(f"box ({box}) must be ≥ 1 and apix_A ({apix_A}) > 0")
    if coords_A.ndim not in (2, 3) or coords_A.shape[-1] != 3:
        raise InputError(f"coords_A has shape {tuple(coords_A.shape)}; expected (N,3) or (B,N,3)")
    if not coords_A.is_floating_point():
        raise InputError("coords_A must be a floating-point tensor")
    n = coords_A.shape[-2]
    bsz = coords_A.shape[0] if coords_A.ndim == 3 else 1
    if rotations is not None:
        if rotations.ndim != 3 or rotations.shape[-2:] != (3, 3):
            raise InputError(f"rotations has shape {tuple(rotations.shape)}; expected (B,3,3)")
        if coords_A.ndim == 3 and rotations.shape[0] != bsz:
            raise InputError(f"rotations has {rotations.shape[0]} poses but coords_A has {bsz} structures")
        bsz = rotations.shape[0]
    if shifts_A is not None:
        shifts_A = torch.as_tensor(shifts_A, dtype=coords_A.dtype, device=coords_A.device)
        if shifts_A.ndim != 2 or shifts_A.shape[-1] != 2 or shifts_A.shape[0] not in (1, bsz):
            raise InputError(f"shifts_A has shape {tuple(shifts_A.shape)}; expected (B,2) with B={bsz}")
    amp = _as_bn(amplitudes, bsz, n, "amplitudes", coords_A)
    sig = _as_bn(sigmas_A, bsz, n, "sigmas_A", coords_A)
    if bool((sig.detach() <= 0).any()):
        raise InputError("sigmas_A must be > 0 (Gaussian widths in Å)")
    # projected centres in pixel-index units: column = x/apix + box//2, row = y/apix + box//2
    if rotations is not None:
        xy = coords_A @ rotations[:, :2, :].transpose(-1, -2)  # (B, N, 2)
    else:
        xy = coords_A[..., :2]
        if xy.ndim == 2:
            xy = xy[None].expand(bsz, n, 2)
    if shifts_A is not None:
        xy = xy + shifts_A[:, None, :]
    centre = xy / apix_A + (box // 2)
    cx, cy = centre[..., 0], centre[..., 1]
    if not bool(torch.isfinite(centre.detach()).all()):
        raise InputError("coordinates, rotations or shifts contain NaN or infinite values; fix the input structure/poses")
    sig_px = sig / apix_A
    uniform_sigma = bool((sig_px.detach() == sig_px.detach()[:, :1]).all())
    if uniform_sigma:
        sig_px = sig_px[:, :1]
    # per-atom normalisation of the two 1D profiles and the 1/apix² of "per Å²", folded into amplitudes
    norm = (0.25 if method == "pixel" else 1.0 / (2.0 * math.pi * sig_px * sig_px)) / (apix_A * apix_A)
    amp = amp * norm
    r_max = int(math.ceil(_N_SIGMA * float(sig_px.detach().max()))) + 1
    s_max = min(_tile_size(r_max), box) + 2 * r_max
    nt_max = -(-box // min(_tile_size(r_max), box))
    # working floats per particle: padded profiles, tile outputs, row strips and canvas
    per_particle = int(2.4 * n * s_max) + nt_max * s_max * (box + 2 * s_max) + (box + 2 * s_max) ** 2
    if chunk_size is None:
        budget = _ELEMENT_BUDGET if cx.device.type == "cpu" else _ELEMENT_BUDGET_GPU
        chunk_size = max(1, min(bsz, budget // per_particle))
    p = _Prepared()
    p.cx, p.cy, p.amp, p.sig_px, p.box, p.method, p.bsz, p.n = cx, cy, amp, sig_px, box, method, bsz, n
    p.chunk_size = chunk_size
    # sort particles by width so that each chunk has short windows
    p.order = torch.argsort(sig_px.detach().amax(1))
    p.sorted_needed = bsz > chunk_size and not bool((p.order == torch.arange(bsz, device=p.order.device)).all())
    p.atom_chunk = max(1, _ELEMENT_BUDGET // int(2.6 * s_max)) if chunk_size == 1 else n
    # forward-only CPU work goes to the compiled kernel (same result; see native_projector.py)
    p.native = native_projector.usable_for(cx, cy, amp, sig_px)
    if p.native and chunk_size_arg is None:
        # the kernel's only working memory is its images: larger chunks, fewer calls downstream
        p.chunk_size = max(1, min(bsz, _NATIVE_CHUNK))
    return p


def _render_selection(p: _Prepared, sel, ws: dict | None) -> torch.Tensor:
    """Images (b, box, box) of the particles ``sel`` (index tensor or slice).

    With a single atom chunk the result may be a (non-contiguous) view of a buffer of ``ws``,
    valid until the next call with the same ``ws``.
    """
    cxc, cyc, ac, sc = p.cx[sel], p.cy[sel], p.amp[sel], p.sig_px[sel]
    if p.native:
        out = _buffer(ws, "native", (cxc.shape[0], p.box, p.box), cxc)
        return native_projector.project(cxc, cyc, ac, sc, p.box, p.method, out=out)
    img = None
    n = p.n
    for a0 in range(0, n, p.atom_chunk):
        a1 = min(n, a0 + p.atom_chunk)
        s_part = sc if sc.shape[1] == 1 else sc[:, a0:a1]
        part = _project_chunk(cxc[:, a0:a1], cyc[:, a0:a1], ac[:, a0:a1], s_part, p.box, p.method, ws)
        if a1 >= n and img is None:
            return part
        img = part.clone() if img is None else img + part  # part is a view of a reused buffer
    return img


def project_gaussians(
    coords_A: torch.Tensor,
    amplitudes: torch.Tensor | float,
    sigmas_A: torch.Tensor | float,
    box: int,
    apix_A: float,
    *,
    rotations: torch.Tensor | None = None,
    shifts_A: torch.Tensor | None = None,
    method: str = "point",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Project Gaussian pseudo-atoms along z: images (B, box, box) in amplitude per Å².

    ``coords_A`` (N,3) shared or (B,N,3); ``rotations`` (B,3,3) pose matrices A
    (coordinates become ``coords @ Aᵀ``), ``shifts_A`` (B,2) real-space shift t
    (x, y) applied exactly by moving the Gaussian centres (no wrap-around).
    ``amplitudes`` and ``sigmas_A``: scalar, (N,), (B,N) or (B,1).
    ``method``: ``"point"`` (value at pixel centres) or ``"pixel"`` (pixel-area mean).
    ``chunk_size``: particles per chunk (default: bounded working memory).
    Differentiable in coords, amplitudes, sigmas, rotations and shifts.
    """
    p = _prepare_projection(coords_A, amplitudes, sigmas_A, box, apix_A, rotations, shifts_A, method, chunk_size)
    bsz, chunk_size, order, sorted_needed = p.bsz, p.chunk_size, p.order, p.sorted_needed
    sorted_images = None
    ws: dict = {}  # working buffers reused by all chunks of this call
    for start in range(0, bsz, chunk_size):
        sel = order[start:start + chunk_size] if sorted_needed else slice(start, start + chunk_size)
        img = _render_selection(p, sel, ws)
        if chunk_size >= bsz:
            return img.contiguous() if img.requires_grad else img.clone()
        if img.requires_grad:
            sorted_images = [img] if sorted_images is None else sorted_images + [img]
            continue
        if sorted_images is None:
            sorted_images = img.new_empty(bsz, box, box)
        sorted_images[start:start + img.shape[0]] = img
    if isinstance(sorted_images, list):
        sorted_images = torch.cat(sorted_images, 0)
    if not sorted_needed:
        return sorted_images
    return sorted_images[torch.argsort(order)]
