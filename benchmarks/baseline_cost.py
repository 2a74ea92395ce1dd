"""Per-particle cost of ``cryoconf baseline`` on this machine; prints JSON.

Realistic case (cryoSBI/BioEM comparison scale): M templates × N pseudo-atoms, box
D, R orientations (4608, 36864), a 5×5 shift grid, 3 defoci. Reports the seconds
per particle and the split between rendering the templates (shared by a batch
of particles) and scoring (per particle).

    python benchmarks/baseline_cost.py [--templates 20] [--atoms 1207] [--box 64]
        [--orientations 4608 36864] [--particles 32] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from cryoconf.baseline import BaselineConfig, TemplateSet, score_particles, so3_grid
from cryoconf.imaging.ctf import CTFParams
from cryoconf.imaging.forward import render_noisy_images


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--templates", type=int, default=20)
    ap.add_argument("--atoms", type=int, default=1207)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--apix", type=float, default=2.0)
    ap.add_argument("--orientations", type=int, nargs="+", default=[4608, 36864])
    ap.add_argument("--particles", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(args.atoms, 3, generator=g) * torch.tensor([22.0, 14.0, 10.0])
    bend = torch.linspace(0, 1, args.templates)
    coords = torch.stack([base + t * 8.0 * torch.tanh(base[:, :1] / 10.0) * torch.tensor([0.0, 1.0, 0.0])
                          for t in bend])
    tm = TemplateSet(coords.to(dev), torch.full((args.atoms,), 7.0, device=dev),
                     torch.full((args.atoms,), 1.5, device=dev), bend.numpy().astype(np.float64))
    p = args.particles
    truth = torch.randint(0, args.templates, (p,), generator=g)
    rots = so3_grid(36864)[torch.randint(0, 36864, (p,), generator=g)]
    ctf = CTFParams.create(torch.empty(p).uniform_(10000, 20000, generator=g), device=dev)
    imgs = render_noisy_images(coords[truth].to(dev), 7.0, 1.5, rots.to(dev), None, ctf, args.box, args.apix, 0.1,
                               generator=torch.Generator(device=dev).manual_seed(1))
    out = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "device": str(dev), "templates": args.templates, "atoms": args.atoms, "box": args.box,
           "shifts": 25, "defoci": 3, "particles_per_batch": p, "runs": []}
    for r in args.orientations:
        cfg = BaselineConfig(n_orientations=r, shift_range_A=2 * args.apix, shift_step_A=args.apix,
                             defocus_offsets_A=(-500.0, 0.0, 500.0), particle_batch=p, cache_bytes=1 << 34)
        cache: dict = {}
        t0 = time.perf_counter()
        res = score_particles(tm, imgs, args.apix, cfg, ctf=ctf, _cache=cache)  # renders (into the cache) + scores
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = score_particles(tm, imgs, args.apix, cfg, ctf=ctf, _cache=cache)  # scores only
        score = time.perf_counter() - t0
        render = first - score
        acc = float(np.mean(res.map_template == truth.numpy()))
        out["runs"].append({
            "orientations": r,
            "render_seconds_all_templates": round(render, 2),
            "render_ms_per_projection": round(1e3 * render / (r * args.templates), 4),
            "score_seconds_per_particle": round(score / p, 3),
            f"seconds_per_particle_batch_of_{p}": round((render + score) / p, 3),
            "seconds_per_particle_batch_of_128": round(render / 128 + score / p, 3),
            "grid_points_per_particle": r * 25 * 3 * args.templates,
            "map_accuracy_snr0.1_off_grid_poses": acc,
        })
        del cache
        print(json.dumps(out["runs"][-1]), flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
