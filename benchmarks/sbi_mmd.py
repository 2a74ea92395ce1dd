"""MMD model-misspecification check of a trained ``cryoconf sbi`` run (cryoSBI, Dingeldein et al.); prints JSON.

Three cases, each the bootstrapped MMD² between the embeddings of the run's own
simulations (seed s+1) and a second set, with its permutation p-value:

- ``same_simulator``: the run's simulator again with another seed (expected: not
  significant);
- ``no_ctf``: the run's simulator without the CTF (expected: significant);
- ``another_structure``: another structure rendered with the run's imaging
  settings and priors (expected: significant). ``--other rearranged`` (the
  default) uses the run's templates with one chain rigidly turned about the axis
  joining the two chains' centroids by ``--angle-deg`` (a different quaternary
  arrangement, same atoms and amplitudes; the chain is the second chain ID, or
  the atoms after the largest Cα–Cα gap of a single-chain file); ``--other PATH``
  renders a structure file instead (PDB/mmCIF or ensemble .npz, e.g.
  ../shared/data/conventions/adk_cryojax_clean/adk_frame000.pdb). Give
  ``--other`` several times for several structures.

Each set holds ``--pool`` particles (default 2·n); every one of ``--trials``
trials draws ``--n`` of each (paper: 10⁴ per set, 100 trials).

    python benchmarks/sbi_mmd.py --run runs/hsp90_box64 --n 2000 --trials 20
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cryoconf.sbi import SBISimulator, load_config, load_run
from cryoconf.sbi.latent import embed_simulated, simulator_for_structure
from cryoconf.sbi.mmd import mmd_test
from cryoconf.sbi.simulator import load_templates
from cryoconf.structure import Conformations

REPO = Path(__file__).resolve().parents[1]


def second_chain_mask(confs: Conformations) -> np.ndarray:
    """(N,) bool: the atoms of the second chain (by chain ID, else after the largest gap between consecutive atoms)."""
    chains = np.asarray(confs.topology.chain_ids)
    _, first = np.unique(chains, return_index=True)
    if first.size > 1:
        second_id = chains[np.sort(first)[1]]
        return chains == second_id
    gaps = np.linalg.norm(np.diff(confs.coords_A[0].astype(np.float64), axis=0), axis=1)
    return np.arange(chains.size) > int(gaps.argmax())


def rotation_about(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """3×3 rotation by ``angle_rad`` about the unit vector ``axis`` (Rodrigues)."""
    u = axis / np.linalg.norm(axis)
    k = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1.0 - np.cos(angle_rad)) * (k @ k)


def rearranged(confs: Conformations, angle_deg: float) -> Conformations:
    """Every template with its second chain turned rigidly about the inter-chain axis through its own centroid."""
    mask = second_chain_mask(confs)
    if mask.all() or not mask.any():
        raise SystemExit("--other rearranged needs a structure with two chains (or a chain gap)")
    out = confs.coords_A.astype(np.float64).copy()
    for m in range(out.shape[0]):
        ca, cb = out[m, ~mask].mean(0), out[m, mask].mean(0)
        r = rotation_about(cb - ca, np.deg2rad(angle_deg))
        out[m, mask] = (out[m, mask] - cb) @ r.T + cb
    return Conformations(topology=confs.topology, coords_A=out, theta=confs.theta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(REPO / "runs" / "hsp90_box64"), help="run directory of `cryoconf sbi train`")
    ap.add_argument("--load", default="latest", help="checkpoint: latest or a path")
    ap.add_argument("--n", type=int, default=10_000, help="particles per set in each trial (paper: 10⁴)")
    ap.add_argument("--pool", type=int, default=None, help="particles simulated per set (default: 2·n)")
    ap.add_argument("--trials", type=int, default=100, help="bootstrap trials (paper: 100)")
    ap.add_argument("--permutations", type=int, default=100, help="permutations for the p-value")
    ap.add_argument("--other", action="append", default=None, metavar="rearranged|PATH",
                    help="another structure (repeatable; default: rearranged)")
    ap.add_argument("--angle-deg", type=float, default=90.0, help="turn of the chain for --other rearranged (°)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    pool = args.pool or 2 * args.n

    t0 = time.perf_counter()
    run = Path(args.run)
    config = load_config(run / "config.yaml")
    model, ckpt = load_run(run, args.load, args.device)
    own = SBISimulator.from_config(config, device=args.device)
    others = {}
    for spec in args.other or ["rearranged"]:
        if spec == "rearranged":
            confs, _ = load_templates(config.templates)
            others[f"rearranged_{args.angle_deg:g}deg"] = simulator_for_structure(
                config, rearranged(confs, args.angle_deg), device=args.device)
        else:
            others[Path(spec).name] = simulator_for_structure(config, spec, device=args.device)

    s = args.seed
    t = time.perf_counter()
    ref = embed_simulated(model, own, pool, seed=s + 1)
    sets = {"same_simulator": embed_simulated(model, own, pool, seed=s + 2),
            "no_ctf": embed_simulated(model, own, pool, seed=s + 2, ctf=False)}
    for i, (label, sim) in enumerate(others.items()):
        key = "another_structure" if i == 0 else f"another_structure_{i + 1}"
        sets[key] = embed_simulated(model, sim, pool, seed=s + 2)
        sets[key + "_label"] = label
    embed_s = time.perf_counter() - t

    cases = {}
    for key, emb in sets.items():
        if key.endswith("_label"):
            continue
        t = time.perf_counter()
        r = mmd_test(ref, emb, n_per_set=args.n, n_trials=args.trials, n_permutations=args.permutations,
                     seed=s, device=args.device)
        cases[key] = {
            **({"structure": sets[key + "_label"]} if key + "_label" in sets else {}),
            "mmd2_mean": r.mmd2_mean, "mmd2_std": r.mmd2_std, "p_value": r.p_value,
            "n_per_set": list(r.n_per_set), "bandwidth": r.bandwidth, "seconds": round(time.perf_counter() - t, 2),
        }
    print(json.dumps({
        "run": str(run), "checkpoint": str(ckpt), "box": model.box,
        "apix_A": model.spec["apix_A"], "n_per_set": args.n, "pool": pool, "trials": args.trials,
        "permutations": args.permutations, "seed": s, "threads": torch.get_num_threads(),
        "embed_seconds": round(embed_s, 2), "total_seconds": round(time.perf_counter() - t0, 2), "cases": cases,
    }, indent=1, default=float))


if __name__ == "__main__":
    main()
