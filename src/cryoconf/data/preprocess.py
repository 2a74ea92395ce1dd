"""Experimental particles → the box, pixel size, noise colour and scaling a simulator-trained model expects.

cryoSBI (Dingeldein et al.) downsampled experimental particles to the pixel
and box size of the simulated images and whitened them; here the same, all
from the particle metadata:

1. **Resample** (:func:`plan_resampling`, :func:`resample_particles`): the
   image is cropped in real space (centred) to a box b ≤ box that still
   covers the target field of view, and its spectrum is cropped (or
   zero-padded) to n = b·apix/target_apix rounded pixels, so the field of
   view is kept and the new pixel size is b·apix/n. The plan takes the b with
   the smallest pixel-size error (which must be within ``rtol``; errors below
   10⁻⁴ count as equal); among those, one that keeps at least 16 input pixels
   round the target field of view (when the box has them: room for
   recentring and for the ringing at the box edge) and whose two transform
   sizes are fastest (no prime factor above 7, small). A sub-pixel phase
   shift keeps the particle centre (pixel b//2) on pixel n//2, in the same
   transform as the spectrum crop. Optionally
   (``center_A``; ``prepare_dataset_batch(..., recenter=True)`` passes the
   metadata's ``shifts_A`` = −origin) the same phase shift first moves each
   particle's centre from where its metadata puts it to the box centre.
2. **Field of view**: the resampled image is cropped (centred) to
   ``target_box`` — or padded with its own mean when it is smaller (the padded
   border holds no noise; avoid when possible).
3. **Whitening** (optional): division of the spectrum by √PSD, with the noise
   PSD estimated from background pixels (outside a circle of
   ``mask_radius_A``; default 0.8 of the half box) — once over many particles
   with :func:`estimate_dataset_psd` (streamed over batches), or per batch
   (``noise_psd="estimate"``). Before estimation and whitening, each image is
   scaled so its background has zero mean and unit std (``prenormalize``;
   experimental particles differ in ice thickness and dose).
4. Optional low-pass (``lowpass_A``, as applied to the training images).
5. **Normalisation** by ``normalize(images)`` — pass the training pipeline's
   own; default: zero mean, unit std over the whole box.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cryoconf.errors import InputError, all_finite
from cryoconf.imaging.filters import (
    circular_mask,
    crop_rfft,
    estimate_noise_psd,
    evaluate_psd,
    fourier_pad,
    lowpass,
    normalize_images,
    whiten,
)
from cryoconf.imaging.shift import shift_images, shift_images_ft

__all__ = [
    "NoisePSD",
    "ResamplePlan",
    "default_mask_radius_A",
    "estimate_batch_psd",
    "estimate_dataset_psd",
    "has_origin_shifts",
    "plan_resampling",
    "prepare_dataset_batch",
    "prepare_particles",
    "resample_particles",
]

DEFAULT_RTOL = 2e-3
DEFAULT_MASK_FRACTION = 0.8
_CHUNK_PIXELS = 1 << 21
_EQUAL_APIX_RTOL = 1e-4  # pixel-size errors this small count as equal (0.006 px across a 64-px radius)
_MARGIN_PX = 16  # input pixels kept round the target field of view, where the box has them (see plan_resampling)


@dataclass(frozen=True)
class ResamplePlan:
    """How a (box_in, box_in) image at apix_in becomes (target_box, target_box) at ≈ target_apix.

    ``crop_in``: centred real-space crop of the input; ``box_resampled``: box
    after the Fourier crop/pad (same field of view as ``crop_in``); ``apix_A``:
    the resulting pixel size (within ``rtol`` of ``target_apix_A``).
    """

    box_in: int
    apix_in_A: float
    crop_in: int
    box_resampled: int
    apix_A: float
    target_box: int
    target_apix_A: float

    @property
    def identity(self) -> bool:
        """Whether the images come back as they are (no crop, resampling or window)."""
        return self.box_in == self.crop_in == self.box_resampled == self.target_box

    @property
    def fov_in_A(self) -> float:
        return self.crop_in * self.apix_in_A

    @property
    def fov_A(self) -> float:
        return self.target_box * self.apix_A

    @property
    def pads(self) -> bool:
        return self.box_resampled < self.target_box

    def describe(self) -> str:
        s = (f"{self.box_in} px at {self.apix_in_A:.4g} Å/px → ")
        if self.crop_in != self.box_in:
            s += f"crop to {self.crop_in} px → "
        s += f"resample to {self.box_resampled} px at {self.apix_A:.5g} Å/px → "
        s += ("pad" if self.pads else "window") + f" to {self.target_box} px"
        return s


def plan_resampling(box: int, apix_A: float, target_box: int, target_apix_A: float,
                    *, rtol: float = DEFAULT_RTOL) -> ResamplePlan:
    """Choose the input crop and resampled box (see the module docstring); InputError when impossible."""
    box, target_box = int(box), int(target_box)
    if box < 2 or target_box < 2:
        raise InputError(f"box sizes must be ≥ 2 pixels; got input {box}, target {target_box}")
    if not (apix_A > 0 and target_apix_A > 0 and math.isfinite(apix_A) and math.isfinite(target_apix_A)):
        raise InputError(f"pixel sizes must be positive; got input {apix_A} Å/px, target {target_apix_A} Å/px")
    ratio = apix_A / target_apix_A
    # the largest crop still covering the target field of view (or the whole box when it is smaller)
    min_crop = min(box, max(2, math.ceil(target_box * target_apix_A / apix_A - 1e-6)))
    candidates = []  # (crop, resampled box, pixel-size error)
    for b in range(box, min_crop - 1, -1):
        n = max(1, round(b * ratio))
        candidates.append((b, n, abs(b * apix_A / n / target_apix_A - 1.0)))
    b, n, err = min(candidates, key=lambda c: (c[2], -c[0]))
    if err > rtol:
        raise InputError(
            f"cannot resample {box}-px particles at {apix_A:.6g} Å/px to {target_apix_A:.6g} Å/px: the closest "
            f"(crop {b} px → {n} px) gives {b * apix_A / n:.6g} Å/px ({100 * err:.3g}% off, tolerance "
            f"{100 * rtol:.3g}%); raise the tolerance (rtol) or train the model at {b * apix_A / n:.6g} Å/px"
        )
    # the most accurate pixel sizes (errors below _EQUAL_APIX_RTOL count as equal); of those, with a margin
    # round the target field of view where the box has one, the pair of transform sizes that is fastest
    accurate = [c for c in candidates if c[2] <= max(err, _EQUAL_APIX_RTOL)]
    wide = [c for c in accurate if c[0] >= min(box, min_crop + 2 * _MARGIN_PX)]
    b, n, _ = min(wide or accurate[:1], key=lambda c: (_fft_cost(c[0]) + _fft_cost(c[1]), -c[0]))
    return ResamplePlan(box, float(apix_A), b, n, b * apix_A / n, target_box, float(target_apix_A))


def _fft_cost(m: int) -> float:
    """Relative cost of an (m, m) FFT: m²·log m, four times that unless m has no prime factor above 7."""
    k = m
    for p in (2, 3, 5, 7):
        while k % p == 0:
            k //= p
    return m * m * math.log2(max(m, 2)) * (1.0 if k == 1 else 4.0)


def _check_images(images) -> torch.Tensor:
    x = torch.as_tensor(images)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[-1] != x.shape[-2]:
        raise InputError(f"particle images must be (B, D, D); got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    if not all_finite(x):
        bad = int((~torch.isfinite(x)).flatten(1).any(1).nonzero()[0, 0])
        raise InputError(f"particle image {bad} (in this batch) contains NaN or infinite pixels; remove it")
    return x


def _single_apix(apix_A, b: int) -> float:
    a = np.asarray(torch.as_tensor(apix_A, dtype=torch.float64).cpu()).reshape(-1)
    if a.size not in (1, b):
        raise InputError(f"apix_A: {a.size} values for {b} images")
    if a.size > 1 and np.ptp(a) > 1e-6 * a.max():
        raise InputError(
            f"these particles have different pixel sizes ({a.min():.6g}–{a.max():.6g} Å/px); prepare each "
            "pixel size separately (prepare_dataset_batch does this from the metadata)"
        )
    return float(a[0])


def resample_particles(images, apix_A, target_box: int, target_apix_A: float, *, rtol: float = DEFAULT_RTOL,
                       plan: ResamplePlan | None = None, center_A=None) -> tuple[torch.Tensor, ResamplePlan]:
    """Images (B, D, D) at ``apix_A`` → (B, target_box, target_box) at ≈ ``target_apix_A``, and the plan used.

    Values keep their units (per Å²): ``image.sum()·apix²`` is preserved by the
    resampling (before any window crop). ``center_A`` (B, 2) (x, y) Å: where each
    particle's centre sits relative to the box centre; it is moved to the centre
    (a periodic shift over the box, after any real-space crop).
    """
    x = _check_images(images)
    apix = _single_apix(apix_A, x.shape[0])
    box = x.shape[-1]
    if plan is None:
        plan = plan_resampling(box, apix, target_box, target_apix_A, rtol=rtol)
    elif plan.box_in != box or abs(plan.apix_in_A - apix) > 1e-6 * apix:
        raise InputError(f"resampling plan is for {plan.box_in} px at {plan.apix_in_A} Å/px, "
                         f"images are {box} px at {apix} Å/px")
    # one phase shift: each particle's centre to the box centre, and that centre onto pixel n//2
    move = torch.zeros(x.shape[0], 2, dtype=x.dtype, device=x.device)
    if center_A is not None:
        move -= torch.as_tensor(center_A, dtype=x.dtype, device=x.device).reshape(x.shape[0], 2)
    if plan.box_resampled != plan.crop_in:
        move += (plan.box_resampled // 2) * plan.apix_A - (plan.crop_in // 2) * apix
    shifts = bool(move.numel()) and float(move.abs().max()) > 1e-6 * apix
    # in chunks of ~2 M pixels: large transforms of whole batches run 2× slower per image on a CPU
    chunk = max(1, _CHUNK_PIXELS // (box * box)) if x.device.type == "cpu" else x.shape[0]
    out = [_resample_chunk(x[i:i + chunk], move[i:i + chunk] if shifts else None, plan)
           for i in range(0, x.shape[0], chunk)]
    if not out:  # no images
        return x.new_zeros(0, plan.target_box, plan.target_box), plan
    return (torch.cat(out) if len(out) > 1 else out[0]).contiguous(), plan


def _resample_chunk(x: torch.Tensor, move_A: torch.Tensor | None, plan: ResamplePlan) -> torch.Tensor:
    """:func:`resample_particles` of images (B, box_in, box_in), moved by ``move_A`` (B, 2) Å (or not)."""
    box, b_in, n, apix = plan.box_in, plan.crop_in, plan.box_resampled, plan.apix_in_A
    if b_in < box:
        s = box // 2 - b_in // 2
        x = x[..., s:s + b_in, s:s + b_in]
    shifts = move_A is not None
    if n < b_in:
        # the shift and the crop share one transform pair (the big one: the input box)
        ft = torch.fft.rfft2(x)
        if shifts:
            ft = shift_images_ft(ft, move_A, apix, b_in)
        x = torch.fft.irfft2(crop_rfft(ft, b_in, n), s=(n, n))
    else:
        if shifts:
            x = shift_images(x, move_A, apix)
        if n > b_in:
            x = fourier_pad(x, n)
    t = plan.target_box
    if n >= t:
        s = n // 2 - t // 2
        x = x[..., s:s + t, s:s + t]
    else:
        out = x.mean(dim=(-2, -1), keepdim=True).expand(x.shape[0], t, t).clone()
        o = t // 2 - n // 2
        out[..., o:o + n, o:o + n] = x
        x = out
    return x


def default_mask_radius_A(target_box: int, apix_A: float) -> float:
    """Default particle-mask radius: 0.8 of the half box (background = the corners and the rim)."""
    return DEFAULT_MASK_FRACTION * (target_box // 2) * apix_A


def _mask_radius_px(box: int, apix_A: float, mask_radius_A: float | None) -> float:
    r = (default_mask_radius_A(box, apix_A) if mask_radius_A is None else float(mask_radius_A)) / apix_A
    if not r > 0:
        raise InputError(f"mask_radius_A must be > 0; got {mask_radius_A}")
    n_bg = int((circular_mask(box, r) == 0).sum())
    if n_bg < max(16, box * box // 50):
        raise InputError(
            f"mask radius {r * apix_A:.4g} Å ({r:.4g} px) leaves only {n_bg} background pixels in a {box}-px "
            f"box; choose a smaller mask_radius_A (the particle's radius, e.g. ≤ {0.8 * (box // 2) * apix_A:.4g} Å)"
        )
    return r


@dataclass
class NoisePSD:
    """A radial noise PSD table at the target sampling and the settings it was estimated with.

    Callable (``psd(freq_inv_A)``), so it can be passed wherever
    :mod:`cryoconf.imaging.filters` takes a PSD.
    """

    freq_inv_A: np.ndarray
    psd: np.ndarray
    box: int
    apix_A: float
    mask_radius_A: float
    prenormalize: bool
    n_particles: int

    def __call__(self, freq_inv_A: torch.Tensor) -> torch.Tensor:
        return evaluate_psd((torch.as_tensor(self.freq_inv_A), torch.as_tensor(self.psd)), freq_inv_A)

    def as_table(self) -> tuple[np.ndarray, np.ndarray]:
        return self.freq_inv_A, self.psd

    def save(self, path) -> Path:
        from cryoconf.atomic_write import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **{k: np.asarray(v) for k, v in asdict(self).items()})
        return path

    @classmethod
    def load(cls, path) -> NoisePSD:
        try:
            with np.load(path) as z:
                return cls(freq_inv_A=z["freq_inv_A"], psd=z["psd"], box=int(z["box"]), apix_A=float(z["apix_A"]),
                           mask_radius_A=float(z["mask_radius_A"]), prenormalize=bool(z["prenormalize"]),
                           n_particles=int(z["n_particles"]))
        except (OSError, KeyError, ValueError) as e:
            raise InputError(f"{path}: not a noise-PSD file written by NoisePSD.save ({e})") from None


def _prenormalize(x: torch.Tensor, radius_px: float) -> torch.Tensor:
    return normalize_images(x, background_radius_px=radius_px)


def estimate_batch_psd(images: torch.Tensor, apix_A: float, *, mask_radius_A: float | None = None,
                       prenormalize: bool = True) -> NoisePSD:
    """Noise PSD from the background of already-resampled images (B, T, T) at ``apix_A``."""
    x = _check_images(images)
    box = x.shape[-1]
    r = _mask_radius_px(box, apix_A, mask_radius_A)
    if prenormalize:
        x = _prenormalize(x, r)
    f, p = estimate_noise_psd(x.to(torch.float64), apix_A, mask_radius_px=r)
    return NoisePSD(f.cpu().numpy(), p.cpu().numpy(), box, float(apix_A), r * apix_A, prenormalize, x.shape[0])


def _groups(dataset, positions: np.ndarray) -> list[np.ndarray]:
    """Positions split by (apix, box) of their particles (positions index the dataset)."""
    rows = dataset.indices[positions]
    apix = np.asarray(dataset.metadata.apix_A, dtype=np.float64)[rows]
    box = np.asarray(dataset.metadata.box)[rows]
    keys = np.stack([np.round(apix, 6), box.astype(np.float64)], 1)
    _, inv = np.unique(keys, axis=0, return_inverse=True)
    return [np.flatnonzero(inv.reshape(-1) == g) for g in range(int(inv.max()) + 1)] if len(rows) else []


def estimate_dataset_psd(dataset, target_box: int, target_apix_A: float, *, mask_radius_A: float | None = None,
                         positions=None, max_particles: int | None = 10_000, batch_size: int = 256, seed: int = 0,
                         prenormalize: bool = True, rtol: float = DEFAULT_RTOL) -> NoisePSD:
    """One noise PSD for a :class:`ParticleDataset`, at the target sampling, streamed over batches.

    A seeded random subset of at most ``max_particles`` (of ``positions``, all
    by default) is read ``batch_size`` at a time, resampled as in
    :func:`prepare_particles`, and the background power of every image is
    averaged per frequency shell (K = target_box//2 + 1 shells).
    """
    if dataset.stack is None:
        raise InputError("estimate_dataset_psd: the dataset has no images (load it with load_images=True)")
    pos = np.arange(len(dataset)) if positions is None else np.asarray(positions, dtype=np.int64).reshape(-1)
    if pos.size == 0:
        raise InputError("estimate_dataset_psd: no particles to estimate the noise from")
    if max_particles is not None and pos.size > max_particles:
        pos = np.sort(np.random.default_rng(seed).choice(pos, size=int(max_particles), replace=False))
    total = None
    count = 0
    apix_sum = 0.0
    radius_A = None
    for g in _groups(dataset, pos):
        gpos = pos[g]
        for i in range(0, gpos.size, batch_size):
            batch = dataset.batch(gpos[i:i + batch_size])
            x, plan = resample_particles(batch["images"], batch["apix_A"], target_box, target_apix_A, rtol=rtol)
            if radius_A is None:
                radius_A = (default_mask_radius_A(target_box, plan.apix_A) if mask_radius_A is None
                            else float(mask_radius_A))
            est = estimate_batch_psd(x, plan.apix_A, mask_radius_A=radius_A, prenormalize=prenormalize)
            w = x.shape[0]
            total = est.psd * w if total is None else total + est.psd * w
            count += w
            apix_sum += plan.apix_A * w
    apix = apix_sum / count
    k = target_box // 2 + 1
    return NoisePSD(np.arange(k) / (target_box * apix), total / count, int(target_box), apix, radius_A,
                    prenormalize, count)


def prepare_particles(
    images,
    apix_A,
    target_box: int,
    target_apix_A: float,
    *,
    noise_psd: NoisePSD | str | None = None,
    center_A=None,
    mask_radius_A: float | None = None,
    prenormalize: bool = True,
    lowpass_A: float | None = None,
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = normalize_images,
    rtol: float = DEFAULT_RTOL,
    psd_floor: float = 1e-6,
) -> torch.Tensor:
    """Experimental particles (B, D, D) at ``apix_A`` → model input (B, target_box, target_box).

    ``noise_psd``: None (no whitening), ``"estimate"`` (from this batch's
    background), a :class:`NoisePSD` from :func:`estimate_dataset_psd` (its mask
    radius and ``prenormalize`` setting are used) or any PSD that
    :func:`~cryoconf.imaging.filters.whiten` takes. ``center_A`` (B, 2) Å: the particles'
    centres relative to the box centre, moved to it (see :func:`resample_particles`). PSD values below
    ``psd_floor``·max are raised to it (frequencies without power, e.g. beyond
    the input's Nyquist after upsampling, are not amplified). ``normalize``:
    the training pipeline's per-image normalisation (None to skip). See the
    module docstring for the steps.
    """
    x, plan = resample_particles(images, apix_A, target_box, target_apix_A, rtol=rtol, center_A=center_A)
    apix = plan.apix_A
    if noise_psd is not None:
        if isinstance(noise_psd, NoisePSD):
            if noise_psd.box != target_box or abs(noise_psd.apix_A / apix - 1) > max(rtol, 1e-6) * 2:
                raise InputError(
                    f"the noise PSD was estimated for {noise_psd.box} px at {noise_psd.apix_A:.5g} Å/px but the "
                    f"particles are prepared to {target_box} px at {apix:.5g} Å/px; estimate it with the same target"
                )
            r_px = noise_psd.mask_radius_A / apix
            pre = noise_psd.prenormalize
        else:
            r_px = _mask_radius_px(target_box, apix, mask_radius_A)
            pre = prenormalize
        if pre:
            x = _prenormalize(x, r_px)
        if isinstance(noise_psd, str):
            if noise_psd != "estimate":
                raise InputError(f"noise_psd must be None, 'estimate' or a PSD; got {noise_psd!r}")
            est = estimate_batch_psd(x, apix, mask_radius_A=r_px * apix, prenormalize=False)
            table = (est.freq_inv_A, est.psd)
        elif isinstance(noise_psd, NoisePSD):
            table = noise_psd.as_table()
        else:
            table = noise_psd
        if isinstance(table, tuple):
            f = torch.as_tensor(np.asarray(table[0]), dtype=torch.float64)
            v = torch.as_tensor(np.asarray(table[1]), dtype=torch.float64)
            if not bool(torch.isfinite(v).all()) or not bool((v >= 0).all()) or not float(v.max()) > 0:
                raise InputError("noise PSD has negative, NaN or all-zero values; re-estimate it on more particles")
            table = (f, v.clamp_min(psd_floor * float(v.max())))
        x = whiten(x, apix, table)
    if lowpass_A is not None:
        x = lowpass(x, apix, lowpass_A)
    if normalize is not None:
        x = normalize(x)
    return x


def has_origin_shifts(dataset) -> bool:
    """Whether the metadata of a :class:`ParticleDataset` gives particle centres off the box centre
    (RELION rlnOriginX/YAngst or rlnOriginX/Y, cryoSPARC alignment shifts), for its selected rows."""
    shifts = dataset.metadata.shifts_A
    return shifts is not None and bool(np.any(np.asarray(shifts)[dataset.indices] != 0))


def prepare_dataset_batch(dataset, positions, target_box: int, target_apix_A: float, *, recenter: bool = False,
                          device=None, **kwargs) -> dict:
    """Read and prepare particles ``positions`` of a :class:`ParticleDataset`, one pixel size at a time.

    Returns {"images": (B, target_box, target_box) in the order of ``positions``,
    "indices": (B,) metadata rows}. ``recenter``: move each particle's centre, which the
    metadata puts at ``shifts_A`` = −origin, to the box centre (``center_A`` of
    :func:`resample_particles`). ``device``: where the images are prepared and returned
    (default: where the reader puts them, the CPU); on a GPU the preparation costs next to
    nothing. ``kwargs`` go to :func:`prepare_particles`.
    """
    if dataset.stack is None:
        raise InputError("prepare_dataset_batch: the dataset has no images (load it with load_images=True)")
    if recenter and dataset.shifts_A is None:
        raise InputError(f"{dataset.metadata.source}: recentring needs particle origins (rlnOriginXAngst/"
                         "rlnOriginYAngst in a STAR file, alignment shifts in a .cs file), and this file has none; "
                         "leave out --recenter (recenter=True)")
    pos = np.asarray(positions, dtype=np.int64).reshape(-1)
    out = None
    for g in _groups(dataset, pos):
        batch = dataset.batch(pos[g])
        images = batch["images"] if device is None else torch.as_tensor(batch["images"]).to(device)
        x = prepare_particles(images, batch["apix_A"], target_box, target_apix_A,
                              center_A=batch["shifts_A"] if recenter else None, **kwargs)
        if out is None:
            out = torch.empty(pos.size, target_box, target_box, dtype=x.dtype, device=x.device)
        out[torch.as_tensor(g, device=x.device)] = x
    if out is None:
        out = torch.empty(0, target_box, target_box, device=device)
    return {"images": out, "indices": torch.as_tensor(dataset.indices[pos])}
