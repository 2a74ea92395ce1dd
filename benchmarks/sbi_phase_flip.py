"""Does phase-flipping the particles help the SBI embedding learn? An A/B training run; prints JSON.

Two models are trained with the same config, seed and particles (θ, nuisances, poses and
noise draws are identical): arm ``raw`` sees the particles as simulated (what ``sbi train``
does); arm ``flip`` sees them phase-flipped, i.e. with their Fourier transform multiplied by
sign(CTF) of their own (drawn) CTF on the model's grid, what a user could do to experimental
particles from their CTF metadata. Phase flipping undoes the CTF's sign changes, so the
network would no longer have to learn its defocus dependence.

Reported per arm: the mean training loss over each ``--interval`` steps (the same particles
for both arms, so the difference is the arm's, not sampling noise), the validation losses
(each arm's held-out set: the same 1,024 particles, flipped or not) and, with ``--init``, the
starting model's validation loss on that arm's held-out set.

    python benchmarks/sbi_phase_flip.py                                   # box 64, 3,000 steps from scratch (≈ 32 min)
    python benchmarks/sbi_phase_flip.py --config runs/hsp90_box128_s2d_ft/config.yaml \\
        --init runs/hsp90_box128_s2d_ft/checkpoint.16000.pt --arms flip --steps 2000 --lr 1e-4
"""

from __future__ import annotations

import argparse
import csv
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from json_report import emit

from cryoconf.imaging.ctf import ctf_rfft
from cryoconf.sbi.config import load_config
from cryoconf.sbi.model import SBIModel
from cryoconf.sbi.simulator import SBISimulator
from cryoconf.sbi.training import VALIDATION_FILE, train_sbi

REPO = Path(__file__).resolve().parents[1]


class PhaseFlippedSimulator(SBISimulator):
    """The simulator's particles, phase-flipped with their own CTF on the model's grid."""

    def render(self, params, generator, noise=True, ctf=True):
        images = super().render(params, generator, noise=noise, ctf=ctf)
        if not ctf:
            return images
        sign = torch.sign(ctf_rfft(self.box, self.apix_A, self.ctf_params(params), device=images.device))
        return torch.fft.irfft2(torch.fft.rfft2(images) * sign, s=images.shape[-2:])


@torch.no_grad()
def mean_nll(model: SBIModel, images: torch.Tensor, targets: torch.Tensor, batch: int = 256) -> float:
    """−log q(θ | I) of ``model`` averaged over held-out particles (the training's validation loss)."""
    model.eval()
    total = sum(float(-model.log_prob(targets[s:s + batch], images[s:s + batch]).double().sum())
                for s in range(0, images.shape[0], batch))
    return total / images.shape[0]


def loss_curve(run: Path, interval: int) -> tuple[list, list]:
    """(mean training loss per ``interval`` steps, validation losses) from RUN/loss.csv."""
    train, val = {}, []
    with open(run / "loss.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            step = int(row["step"])
            if row.get("val_loss"):
                val.append({"step": step, "loss": round(float(row["val_loss"]), 4)})
            elif row.get("train_loss"):
                train.setdefault((step - 1) // interval, []).append(float(row["train_loss"]))
    means = [{"steps": f"{k * interval + 1}-{k * interval + len(v)}", "loss": round(float(np.mean(v)), 4)}
             for k, v in sorted(train.items())]
    return means, val


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "sbi_hsp90_box64.yaml"))
    ap.add_argument("--init", default=None, help="start both arms from this checkpoint (default: from scratch)")
    ap.add_argument("--arms", nargs="+", default=["raw", "flip"], choices=["raw", "flip"])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=None, help="constant learning rate (default: the config's)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--interval", type=int, default=500, help="steps per training-loss mean and validation")
    ap.add_argument("--validation-size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--outdir", default=None, help="keep the two runs here (default: a temporary directory)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {"training.steps": args.steps, "training.lr_decay_start": args.steps, "training.seed": args.seed,
                 "training.validation_interval": args.interval, "training.checkpoint_interval": args.steps,
                 "training.validation_size": args.validation_size}
    if args.lr is not None:
        overrides["training.lr"] = args.lr
    config = load_config(args.config, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        outdir = Path(args.outdir or tmp)
        arms = {}
        for arm in args.arms:
            run = outdir / f"phase_flip_{arm}"
            simulator = (PhaseFlippedSimulator if arm == "flip" else SBISimulator).from_config(config)
            result = train_sbi(config, run, init=args.init, simulator=simulator, progress=False)
            train, val = loss_curve(run, args.interval)
            report = {"training_loss": train, "validation_loss": val, "steps_per_s": round(result.timings["steps_per_s"], 2)}
            if args.init:
                held_out = torch.load(run / VALIDATION_FILE, map_location="cpu", weights_only=False)
                start = SBIModel.load(args.init)
                report["initial_model_validation_loss"] = round(
                    mean_nll(start, held_out["images"], held_out["targets"]), 4)
            arms[arm] = report
    emit({"config": args.config, "box": config.image.box, "apix_A": config.image.apix_A,
          "embedding": config.embedding.name, "init": args.init, "steps": args.steps,
          "lr": config.training.lr, "batch_size": config.training.batch_size, "seed": args.seed,
          "threads": args.threads, "machine": platform.machine(), "arms": arms}, args.json)


if __name__ == "__main__":
    main()
