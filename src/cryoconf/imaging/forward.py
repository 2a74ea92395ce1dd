"""The forward model: rotate, project, shift, CTF, crop — a composition of the stages.

:func:`render_images` composes the stages over the whole batch (differentiable).
:func:`render_noisy_images` is the fused simulation path (no autograd): for each
small chunk of particles it projects into reused buffers, applies the CTF in
Fourier space, takes the clean image's SNR variance there (Parseval), transforms
back and adds the white noise, so every intermediate stays cache-sized.
"""

from __future__ import annotations

import torch

from cryoconf.errors import InputError
from cryoconf.imaging.ctf import CTFParams, apply_ctf, ctf_rfft_into
from cryoconf.imaging.projection import _buffer, _prepare_projection, _render_selection, project_gaussians

__all__ = ["render_images", "render_noisy_images", "RenderWorkspace"]


class RenderWorkspace:
    """Working buffers that :func:`render_noisy_images` reuses across calls.

    Pass the same workspace to repeated calls (e.g. batch after batch of a simulation) so
    that the buffers are not allocated afresh, and page-faulted in, every call.
    Not to be shared by calls running at the same time.
    """

    def __init__(self) -> None:
        self.buffers: dict = {}


def render_images(
    coords_A: torch.Tensor,
    amplitudes_e,
    sigmas_A,
    rotations: torch.Tensor,
    shifts_A: torch.Tensor | None,
    ctf: CTFParams | None,
    box: int,
    apix_A: float,
    *,
    pad_factor: float = 1,
    projector: str = "point",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Noise-free particle images (B, box, box).

    ``coords_A`` (N,3) or (B,N,3); ``amplitudes_e``/``sigmas_A`` scalar, (N,),
    (B,N) or (B,1); ``rotations`` (B,3,3) pose A; ``shifts_A`` (B,2) t (x, y) Å,
    applied exactly in real space (Gaussian centres moved, no wrap-around);
    ``ctf`` per-particle parameters or None (projection only); ``pad_factor``:
    zero-pad to pad·box for the CTF, then crop. ``projector``: "point" | "pixel".
    """
    if ctf is not None and len(ctf) != rotations.shape[0]:
        raise InputError(f"ctf has {len(ctf)} particles but rotations has {rotations.shape[0]}")
    images = project_gaussians(
        coords_A, amplitudes_e, sigmas_A, box, apix_A,
        rotations=rotations, shifts_A=shifts_A, method=projector, chunk_size=chunk_size,
    )
    if ctf is not None:
        images = apply_ctf(images, ctf.to(device=images.device), apix_A, pad_factor=pad_factor)
    return images


def parseval_variance(spectrum: torch.Tensor, box: int, work: torch.Tensor | None = None) -> torch.Tensor:
    """Variance over the box (B,) of the real images (B, box, box) whose ``rfft2`` is ``spectrum``.

    Σx² = Σ_k w_k|F_k|²/N² over the half-plane (w = 2 except the kx = 0 and Nyquist
    columns), mean = F₀/N², so var = (Σ_k w_k|F_k|² − |F₀|²)/N⁴.
    """
    vr = torch.view_as_real(spectrum)
    sq = torch.mul(vr, vr, out=work) if work is not None else vr * vr  # (B, N, M, 2)
    total = sq.sum(dim=(1, 2, 3)).mul_(2.0)
    total -= sq[:, :, 0].sum(dim=(1, 2))
    if box % 2 == 0 and sq.shape[2] > 1:
        total -= sq[:, :, -1].sum(dim=(1, 2))
    total -= sq[:, 0, 0].sum(dim=-1)
    return total.div_(float(box) ** 4).clamp_min_(0)


def render_noisy_images(
    coords_A: torch.Tensor,
    amplitudes_e,
    sigmas_A,
    rotations: torch.Tensor,
    shifts_A: torch.Tensor | None,
    ctf: CTFParams | None,
    box: int,
    apix_A: float,
    snr,
    *,
    snr_definition: str = "box",
    mask_radius_px: float | None = None,
    generator: torch.Generator | None = None,
    pad_factor: float = 1,
    projector: str = "point",
    chunk_size: int | None = None,
    return_clean: bool = False,
    workspace: RenderWorkspace | None = None,
):
    """Noisy particle images (B, box, box): :func:`render_images` plus white noise at ``snr``.

    Same arguments as :func:`render_images`, plus ``snr`` (scalar or (B,); inf = no
    noise) under ``snr_definition`` ("box" or "mask" with ``mask_radius_px``, as in
    :func:`cryoconf.imaging.noise.add_white_noise`), measured on each particle's clean
    CTF-filtered image. Fused per chunk of particles (no autograd; with gradients it
    falls back to the separate stages). The noise is drawn from per-chunk generators
    seeded from ``generator``: reproducible for a seed, but not the same draws as
    :func:`add_white_noise`.
    ``return_clean``: also return the clean images, as ``(noisy, clean)``.
    ``workspace``: a :class:`RenderWorkspace` to reuse buffers across calls.
    """
    if ctf is not None and len(ctf) != rotations.shape[0]:
        raise InputError(f"ctf has {len(ctf)} particles but rotations has {rotations.shape[0]}")
    if snr_definition not in ("box", "mask"):
        raise InputError(f"SNR definition {snr_definition!r} is unknown; use 'box' or 'mask'")
    if snr_definition == "mask" and mask_radius_px is None:
        raise InputError("SNR definition 'mask' needs mask_radius_px")
    big = int(round(pad_factor * box))
    if big < box:
        raise InputError(f"pad_factor ({pad_factor}) must be ≥ 1")
    grads = torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in (coords_A, amplitudes_e, sigmas_A, rotations, shifts_A))
    if grads or (ctf is not None and any(getattr(ctf, f).requires_grad for f in ctf.__dataclass_fields__)):
        from cryoconf.imaging.noise import add_white_noise

        clean = render_images(coords_A, amplitudes_e, sigmas_A, rotations, shifts_A, ctf, box, apix_A,
                              pad_factor=pad_factor, projector=projector, chunk_size=chunk_size)
        noisy = add_white_noise(clean, snr, snr_definition, mask_radius_px, generator)
        return (noisy, clean) if return_clean else noisy

    with torch.no_grad():
        p = _prepare_projection(coords_A, amplitudes_e, sigmas_A, box, apix_A, rotations, shifts_A, projector, chunk_size)
        dev, dt = p.cx.device, p.cx.dtype
        bsz = p.bsz
        snr_t = torch.as_tensor(snr, dtype=dt, device=dev)
        if bool((snr_t <= 0).any()) or bool(torch.isnan(snr_t).any()):
            raise InputError("snr must be > 0 (use inf for no noise)")
        if snr_t.ndim > 1 or (snr_t.ndim == 1 and snr_t.shape[0] not in (1, bsz)):
            raise InputError(f"snr has shape {tuple(snr_t.shape)}; expected a scalar or ({bsz},)")
        snr_t = snr_t.reshape(-1).expand(bsz)
        if ctf is not None:
            ctf = ctf.to(device=dev)
        mask = None
        if snr_definition == "mask":
            from cryoconf.imaging.filters import circular_mask

            mask = circular_mask(box, mask_radius_px, dtype=dt, device=dev) > 0
        cs = p.chunk_size
        starts = list(range(0, bsz, cs))
        # one noise seed per chunk: the draws do not depend on the order chunks are rendered in
        seeds = torch.randint(0, 2**62, (len(starts),), generator=generator,
                              device=generator.device if generator is not None else "cpu").tolist()
        noisy_out = torch.empty(bsz, box, box, dtype=dt, device=dev)
        clean_out = torch.empty(bsz, box, box, dtype=dt, device=dev) if return_clean else None
        p0 = big // 2 - box // 2

        def render_chunk(c: int, ws: dict) -> None:
            sel = p.order[starts[c]:starts[c] + cs]
            img = _render_selection(p, sel, ws)
            b = img.shape[0]
            var = None
            if ctf is None:
                clean = img
            else:
                if big > box:
                    pad = ws.get("pad")
                    if pad is None or pad.shape[0] < b:
                        pad = ws["pad"] = img.new_zeros(b, big, big)  # borders stay zero for good
                    padded = pad[:b]
                    padded[:, p0:p0 + box, p0:p0 + box] = img
                else:
                    padded = _buffer(ws, "pad", (b, big, big), img)
                    padded.copy_(img)
                m = big // 2 + 1
                spec = _buffer(ws, "spec", (b, big, m), torch.view_as_complex(img.new_empty(1, 2)))
                torch.fft.rfft2(padded, out=spec)
                ctf_rfft_into(_buffer(ws, "ctf", (b, big, big // 2 + 1), img), big, apix_A, ctf[sel])
                torch.view_as_real(spec).mul_(ws["ctf"][:b * big * (big // 2 + 1)].view(b, big, big // 2 + 1)[..., None])
                if mask is None and big == box:
                    var = parseval_variance(spec, box, _buffer(ws, "sq", (b, big, big // 2 + 1, 2), img))
                full = torch.fft.irfft2(spec, s=(big, big), out=_buffer(ws, "full", (b, big, big), img))
                clean = full[:, p0:p0 + box, p0:p0 + box] if big > box else full
            if var is None:
                var = clean.reshape(b, -1).var(dim=-1, unbiased=False) if mask is None else \
                    clean[:, mask].var(dim=-1, unbiased=False)
            std = torch.sqrt(var / snr_t[sel])
            g = torch.Generator(device=dev).manual_seed(seeds[c])
            noise = _buffer(ws, "noise", (b, box, box), img).normal_(generator=g)
            noise.mul_(std[:, None, None]).add_(clean)
            noisy_out.index_copy_(0, sel, noise)
            if clean_out is not None:
                clean_out.index_copy_(0, sel, clean)

        ws = (workspace if workspace is not None else RenderWorkspace()).buffers
        for c in range(len(starts)):
            render_chunk(c, ws)
    return (noisy_out, clean_out) if return_clean else noisy_out
