"""Throughput of on-the-fly particle simulation (cryoSBI-style Hsp90 templates).

Renders batches of particles: 1207 pseudo-atoms, one σ ∈ [0.5, 5] Å per particle,
random template, uniform random pose, random shift, random astigmatic CTF
(defocus 0.5–2.5 µm), white noise at a random SNR; box 128, 1.5 Å/px.
Default: the fused library path ``render_noisy_images`` (project → CTF → SNR variance →
noise per chunk, on ``--threads`` cores). ``--unfused`` times
the separate stages (project_gaussians, apply_ctf, add_white_noise) for a per-stage
breakdown. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from cryoconf.devices import synchronize
from cryoconf.imaging import native_projector
from cryoconf.imaging.ctf import CTFParams, apply_ctf
from cryoconf.imaging.forward import RenderWorkspace, render_noisy_images
from cryoconf.imaging.noise import add_white_noise
from cryoconf.imaging.projection import project_gaussians
from cryoconf.imaging.rotations import random_rotations

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hsp90" / "hsp90_models.pt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--apix", type=float, default=1.5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--projector", default="point", choices=["point", "pixel"])
    ap.add_argument("--pad-factor", type=float, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--unfused", action="store_true", help="time the separate stages instead (per-stage breakdown)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = {"device": args.device, "threads": args.threads, "box": args.box, "batch": args.batch, "dtype": args.dtype}
    if not os.path.exists(args.data):
        print(json.dumps({**base, "error": f"data file not found: {args.data} (pass --data)"}))
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({**base, "error": "CUDA requested but not available"}))
        return
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    models = torch.load(args.data).transpose(1, 2).contiguous().to(dev, dtype)  # (20, N, 3)
    n_models, n_atoms = models.shape[:2]
    gen = torch.Generator(device=dev).manual_seed(0)
    b = args.batch
    workspace = RenderWorkspace()

    def one_batch(times):
        t0 = time.perf_counter()
        idx = torch.randint(0, n_models, (b,), generator=gen, device=dev)
        coords = models[idx]
        sigma = 0.5 + 4.5 * torch.rand(b, 1, generator=gen, device=dev, dtype=dtype)
        rot = random_rotations(b, gen, dtype=dtype, device=dev)
        shifts = (torch.rand(b, 2, generator=gen, device=dev, dtype=dtype) - 0.5) * 2 * 6.0
        u = 5000 + 20000 * torch.rand(b, generator=gen, device=dev, dtype=dtype)
        dv = (torch.rand(b, generator=gen, device=dev, dtype=dtype) - 0.5) * 1000
        ang = torch.rand(b, generator=gen, device=dev, dtype=dtype) * math.pi
        ctf = CTFParams.create(u, u + dv, ang, 300.0, 2.7, 0.1, dtype=dtype, device=dev)
        snr = 10 ** (-2 + 1.5 * torch.rand(b, generator=gen, device=dev, dtype=dtype))
        synchronize(dev); t1 = time.perf_counter()
        if not args.unfused:
            img = render_noisy_images(coords, 1.0, sigma, rot, shifts, ctf, args.box, args.apix, snr,
                                      snr_definition="box", generator=gen, pad_factor=args.pad_factor,
                                      projector=args.projector, workspace=workspace)
            synchronize(dev); t2 = time.perf_counter()
            for k, v in zip(("params", "render_fused"), (t1 - t0, t2 - t1)):
                times[k] = times.get(k, 0.0) + v
            return img
        img = project_gaussians(coords, 1.0, sigma, args.box, args.apix, rotations=rot, shifts_A=shifts, method=args.projector)
        synchronize(dev); t2 = time.perf_counter()
        img = apply_ctf(img, ctf, args.apix, pad_factor=args.pad_factor)
        synchronize(dev); t3 = time.perf_counter()
        img = add_white_noise(img, snr, "box", generator=gen)
        synchronize(dev); t4 = time.perf_counter()
        for k, v in zip(("params", "project", "ctf", "noise"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[k] = times.get(k, 0.0) + v
        return img

    one_batch({})  # warm-up
    times: dict = {}
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        one_batch(times)
    synchronize(dev)
    total = time.perf_counter() - t0
    n = args.repeats * b
    out = {
        "particles_per_s": round(n / total, 1),
        **base,
        "n_atoms": int(n_atoms),
        "projector": args.projector,
        "projector_backend": "compiled" if (native_projector.available() and dev.type == "cpu") else "torch",
        "path": "unfused" if args.unfused else "fused",
        "pad_factor": args.pad_factor,
        "repeats": args.repeats,
        "ms_per_batch": round(1e3 * total / args.repeats, 2),
        "breakdown_ms_per_batch": {k: round(1e3 * v / args.repeats, 2) for k, v in times.items()},
        "torch": torch.__version__,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
