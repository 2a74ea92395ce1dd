"""``cryoconf sbi infer`` on particles from an independent simulator (cryojax 0.6.0); prints JSON.

The 64 noise-free ADK particles of ``../shared/data/conventions/adk_cryojax_clean``
(box 64, 1.5 Å/px; closed or open, all-atom Peng scattering, random poses,
astigmatic CTFs, origins up to 3 Å) are copied ``--copies`` times with white
Gaussian noise at each ``--snr`` (variance over the box, the cryojax set's own
definition). cryoconf re-renders the same STAR rows from the same two PDBs
(Cα pseudo-atoms) and gets the same noise draws. A model is trained (or taken
from ``--run``) on an ADK ensemble of 19 frames of the DIMS closed→open
trajectory, θ = Cα RMSD to the closed frame (0 – 7.56 Å), at box 32 and 3 Å/px:
the particles are resampled to it by ``sbi infer``.

Reported per SNR and per simulator, with and without recentring on the STAR's
origins: the fraction of particles whose posterior mean lies on the side of
θ = 3.78 Å (half the range) of their true state, the mean posterior mean of the
closed and of the open particles, and the RMS difference between the posterior
means of the cryojax particles and of cryoconf's re-rendering of them.

    python benchmarks/sbi_cross_simulator.py                 # trains runs/adk_cross_simulator (≈ 4 min)
    python benchmarks/sbi_cross_simulator.py --run RUN       # an existing run on the same ensemble
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np

from cryoconf.cli.main import main as cryoconf_main
from cryoconf.data import read_metadata, write_mrcs, write_relion31_star
from cryoconf.rundir import resolve_checkpoint
from cryoconf.sbi import SBIModel
from cryoconf.sbi.inference import infer_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
FRAMES = list(range(0, 81, 5)) + [90, 101]  # θ increasing from 0 (closed) to 7.56 Å (open)

CONFIG = """\
# written by benchmarks/sbi_cross_simulator.py
templates: {{path: ensemble.npz, mode: ca, center: first, amplitudes: topology}}
image: {{box: 32, apix_A: 3.0, voltage_kV: 300.0, cs_mm: 2.7, pad_factor: 1, projector: point, snr_definition: box}}
priors:
  sigma_A: [1.0, 3.5]
  defocus_A: [4000, 16000]
  astigmatism_A: [0, 1000]
  bfactor_A2: [0, 100]
  amplitude_contrast: 0.1
  snr: [0.03, 3.0]
  shift_A: {shift}
posterior: {{parameters: [theta]}}
embedding: {{name: cnn, params: {{channels: [16, 32, 64], hidden: 128, out_features: 64}}}}
flow: {{transforms: 3, hidden_features: [64, 64], bins: 8}}
training: {{optimizer: adamw, lr: 1.0e-3, weight_decay: 0.01, clip_grad_norm: 5.0, batch_size: 128, steps: {steps},
           lr_schedule: cosine, lr_decay_start: {decay}, lr_final: 5.0e-5, validation_size: 512,
           validation_interval: 100, checkpoint_interval: 500, seed: 0}}
"""


def cryoconf(argv: list[str]) -> int:
    """``cryoconf ARGV``, its messages to stderr (stdout holds the JSON alone)."""
    with contextlib.redirect_stdout(sys.stderr):
        return cryoconf_main(argv)


def train(run: Path, steps: int, shift_A: float) -> float:
    """Build the ADK trajectory ensemble and train the model into ``run``; returns the seconds spent."""
    adk = SHARED / "adk"
    run.parent.mkdir(parents=True, exist_ok=True)
    work = run.parent / f"{run.name}_inputs"
    work.mkdir(exist_ok=True)
    assert cryoconf(["ensemble", "trajectory", str(adk / "adk4ake.psf"), str(adk / "dims0001_fit-core.dcd"),
                     "--frames", ",".join(map(str, FRAMES)), "--align", "none", "-o",
                     str(work / "ensemble.npz")]) == 0  # the DCD is already fitted on the core domain
    (work / "config.yaml").write_text(CONFIG.format(shift=shift_A, steps=steps, decay=steps // 4))
    t0 = time.perf_counter()
    assert cryoconf(["sbi", "train", str(work / "config.yaml"), "-o", str(run), "--no-progress"]) == 0
    return time.perf_counter() - t0


def noisy_copies(clean: np.ndarray, snr: float, copies: int, seed: int) -> np.ndarray:
    """(copies·N, D, D): ``copies`` noisy versions of each clean image, white noise of variance var(image)/snr."""
    rng = np.random.default_rng(seed)
    sd = np.sqrt(clean.astype(np.float64).var(axis=(1, 2)) / snr)[:, None, None]
    return np.concatenate([clean + sd * rng.standard_normal(clean.shape) for _ in range(copies)]).astype(np.float32)


def write_particles(folder: Path, images: np.ndarray, star: Path, copies: int) -> Path:
    """``images`` as folder/particles.mrcs with the rows of ``star`` repeated ``copies`` times."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = read_metadata(star)
    write_mrcs(folder / "particles.mrcs", images, float(meta.apix_A[0]))
    rows = np.tile(np.arange(len(meta)), copies)
    out = meta.subset(rows)
    out.image_names = np.array([f"{k + 1}@particles.mrcs" for k in range(len(rows))], dtype=object)
    write_relion31_star(folder / "particles.star", out, keep_extra=False)
    return folder / "particles.star"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None, help="an existing run on this benchmark's ensemble (skips training)")
    ap.add_argument("--out", default=str(REPO / "runs" / "adk_cross_simulator"), help="run and work directory")
    ap.add_argument("--steps", type=int, default=4000, help="training steps (batches of 128)")
    ap.add_argument("--shift", type=float, default=0.0, help="training prior on shifts (Å, per axis)")
    ap.add_argument("--snr", type=float, nargs="+", default=[1.0, 0.1])
    ap.add_argument("--copies", type=int, default=16, help="noise draws per particle")
    ap.add_argument("--seed", type=int, default=123)
    args = ap.parse_args()

    folder = SHARED / "conventions" / "adk_cryojax_clean"
    if not folder.exists() or not (SHARED / "adk").exists():
        raise SystemExit(f"{SHARED}: the reference data (conventions/adk_cryojax_clean, adk) are needed")
    out = Path(args.out)
    result: dict = {"particles": str(folder), "copies": args.copies}
    if args.run is None:
        run = out / "run"
        result["training"] = {"steps": args.steps, "shift_prior_A": args.shift,
                              "seconds": round(train(run, args.steps, args.shift), 1)}
    else:
        run = Path(args.run)
    model = SBIModel.load(resolve_checkpoint("latest", run)).freeze_for_inference()
    result["run"] = str(run)
    star = folder / "particles.star"
    truth = np.load(folder / "truth.npz")
    clean = {}
    with mrcfile.open(folder / "particles.mrcs") as m:
        clean["cryojax"] = np.array(m.data, dtype=np.float32)
    rendered = {}
    for name in ("adk_frame000.pdb", "adk_frame101.pdb"):  # cryoconf renders the same rows from the same PDBs
        assert cryoconf(["simulate", str(folder / name), "-o", str(out / "rerendered" / name), "--from-star",
                         str(star), "--snr", "inf", "--no-progress"]) == 0
        with mrcfile.open(out / "rerendered" / name / "particles.mrcs") as m:
            rendered[name] = np.array(m.data, dtype=np.float32)
    is_open = truth["conf"] == 1
    clean["cryoconf"] = np.where(is_open[:, None, None], rendered["adk_frame101.pdb"], rendered["adk_frame000.pdb"])
    open_all = np.tile(is_open, args.copies)
    middle = 0.5 * float(np.max(model.spec["template_theta"]))
    result["threshold_A"] = middle
    for snr in args.snr:
        row: dict = {}
        files = {source: write_particles(out / f"{source}_snr{snr:g}", noisy_copies(images, snr, args.copies,
                                                                                   args.seed), star, args.copies)
                 for source, images in clean.items()}
        for recenter in (True, False):
            means = {}
            for source, particles in files.items():
                inf = infer_dataset(model, particles, out / f"posterior_{source}_snr{snr:g}_{recenter}",
                                    recenter=recenter, progress=False, n_examples=3)
                m = inf.summary.mean[:, 0]
                means[source] = m
                row[f"{source}{'' if recenter else '_not_recentred'}"] = {
                    "fraction_on_the_true_side": round(float(np.mean((m > middle) == open_all)), 4),
                    "mean_theta_closed_A": round(float(m[~open_all].mean()), 3),
                    "mean_theta_open_A": round(float(m[open_all].mean()), 3),
                    "mean_posterior_std_A": round(float(inf.summary.std[:, 0].mean()), 3),
                }
            key = "rms_difference_of_means_A" + ("" if recenter else "_not_recentred")
            row[key] = round(float(np.sqrt(np.mean((means["cryojax"] - means["cryoconf"]) ** 2))), 3)
        result[f"snr_{snr:g}"] = row
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
