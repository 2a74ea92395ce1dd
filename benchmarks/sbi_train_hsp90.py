"""Short training of ``cryoconf sbi`` on the Hsp90 templates (CPU or GPU); prints one JSON object.

Builds the Hsp90 ensemble .npz (20 Cα models from ../shared/data/hsp90/hsp90_models.pt,
θ = Cα RMSD to model 0 after superposition, Å) if it is missing, then trains with
the given config for ``--steps`` steps and reports steps/s, the training and
validation loss trajectory and the simulation vs network time per batch.

    python benchmarks/sbi_train_hsp90.py --config configs/sbi_hsp90_box64.yaml --steps 300 -o /tmp/sbi_hsp90
    python benchmarks/sbi_train_hsp90.py --config configs/sbi_hsp90_box128.yaml --steps 300 --device cuda
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from cryoconf.dynamics import rmsd
from cryoconf.sbi import load_config, train_sbi
from cryoconf.structure import Conformations, Structure, save_conformations

REPO = Path(__file__).resolve().parents[1]


def build_hsp90_ensemble(models_pt: Path, out: Path) -> Path:
    """Write the Hsp90 ensemble .npz: coords (20, 1207, 3), θ = aligned Cα RMSD to model 0 (Å)."""
    coords = torch.load(models_pt).transpose(1, 2).contiguous().double()  # (20, 1207, 3)
    theta = rmsd(coords, coords[:1].expand_as(coords), align=True).numpy()
    n = coords.shape[1]
    top = Structure(coords_A=coords[0].numpy(), atom_names=["CA"] * n, residue_names=["ALA"] * n,
                    residue_numbers=np.arange(1, n + 1), chain_ids=["A"] * n, amplitudes_e=np.ones(n),
                    sigmas_A=np.ones(n), residue_index=np.arange(n), chain_breaks=np.r_[True, np.zeros(n - 1, bool)])
    save_conformations(out, Conformations(topology=top, coords_A=coords.float().numpy(), theta=theta))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "sbi_hsp90_box64.yaml"))
    ap.add_argument("--models", default=str(REPO.parent / "shared" / "data" / "hsp90" / "hsp90_models.pt"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("-o", "--output", default="/tmp/cryoconf_sbi_hsp90")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    config = load_config(args.config)
    ens = Path(config.templates.path)
    if not ens.exists():
        build_hsp90_ensemble(Path(args.models), ens)
    shutil.rmtree(args.output, ignore_errors=True)
    res = train_sbi(config, args.output, steps=args.steps, device=args.device, progress=False)
    tl = np.array([v for _, v in res.train_losses])
    k = max(1, len(tl) // 10)
    print(json.dumps({
        "config": args.config, "box": config.image.box, "apix_A": config.image.apix_A,
        "embedding": config.embedding.name, "batch_size": config.training.batch_size, "threads": torch.get_num_threads(),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        **{k2: round(v, 4) for k2, v in res.timings.items()},
        "train_loss_means": [[int(res.train_losses[min(i + k, len(tl)) - 1][0]), round(float(tl[i:i + k].mean()), 4)]
                             for i in range(0, len(tl), k)],
        "validation_loss": [[s, round(v, 4)] for s, v in res.validation_losses],
        "prior_entropy_nats": float(np.log(np.ptp(np.asarray(res.model.spec["low"] + res.model.spec["high"])))),
    }, indent=1))


if __name__ == "__main__":
    main()
