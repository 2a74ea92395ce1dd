"""Throughput of `cryoconf sbi infer`'s network part, two ways.

Builds the model of an SBI config (or loads a trained run with ``--run``) and
times on batches of particle images at the model's box:

- ``particles_per_s``: ``SBIModel.sample`` (normalisation, embedding, ``--samples``
  posterior samples per particle; the cryoSBI procedure and ``--summaries samples``);
- ``flow_summaries_particles_per_s``: ``SBIModel.summarize`` (normalisation, embedding,
  every summary ``sbi infer`` writes — mean, std, quantiles, template probabilities —
  from the flow itself; ``sbi infer``'s default for one parameter).

- with ``--input-box``/``--input-apix``: ``prepare_ms_per_particle``, what ``sbi infer``
  spends per particle before the network on particles of that sampling (recentring on
  their origins, resampling to the model's box and pixel size, whitening with a
  dataset noise PSD, normalisation; reading from disk not included), and
  ``end_to_end_particles_per_s`` (that plus ``SBIModel.summarize``).

Speed depends on the architecture, not on the weights, so an untrained model of the
same config measures the same. Prints one JSON object.

    python benchmarks/sbi_throughput.py --config configs/sbi_hsp90_box64.yaml --threads 2
    python benchmarks/sbi_throughput.py --config configs/sbi_hsp90_box128.yaml --input-box 256 --input-apix 1.06
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cryoconf.devices import synchronize
from cryoconf.sbi.model import SBIModel

ROOT = Path(__file__).resolve().parents[1]


def build_model(args) -> SBIModel:
    if args.run:
        from cryoconf.rundir import resolve_checkpoint

        return SBIModel.load(resolve_checkpoint("latest", args.run))
    import yaml

    from cryoconf.sbi.config import SBIConfig

    raw = yaml.safe_load(Path(args.config).read_text())
    config = SBIConfig.from_dict(raw, base_dir=Path(args.config).parent)
    theta = torch.linspace(0.0, 10.0, 20).tolist()
    return SBIModel.from_config(config, theta, [(-0.25, 10.25)])


def time_preparation(model: SBIModel, args) -> float:
    """Seconds for ``sbi infer``'s preparation of one batch of raw noise particles (best of ``--repeats``), on
    the model's device as ``sbi infer`` prepares them (the copy of the raw images to a GPU included)."""
    from cryoconf.data.preprocess import estimate_batch_psd, prepare_particles, resample_particles
    from cryoconf.sbi.simulator import normalize_for_sbi

    g = torch.Generator().manual_seed(1)
    raw = torch.randn(args.batch, args.input_box, args.input_box, generator=g)
    origins_A = 4 * torch.rand(args.batch, 2, generator=g) - 2
    apix = model.spec["apix_A"]
    psd = estimate_batch_psd(resample_particles(raw, args.input_apix, model.box, apix)[0], apix)
    dev = model.device
    times = []
    for i in range(args.repeats + 1):  # the first is a warm-up
        synchronize(dev)
        t0 = time.perf_counter()
        prepare_particles(raw.to(dev), args.input_apix, model.box, apix, noise_psd=psd, center_A=origins_A.to(dev),
                          normalize=normalize_for_sbi)
        synchronize(dev)
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "sbi_hsp90_box64.yaml"))
    ap.add_argument("--run", default=None, help="a trained run directory instead of --config")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--input-box", type=int, default=None,
                    help="also time the preparation of raw particles of this box (needs --input-apix)")
    ap.add_argument("--input-apix", type=float, default=None, help="pixel size (Å) of those raw particles")
    ap.add_argument("--no-freeze", action="store_true",
                    help="time the embedding as trained (no batch-norm folding / MKL-DNN inference copy)")
    args = ap.parse_args()
    if (args.input_box is None) != (args.input_apix is None):
        ap.error("--input-box and --input-apix go together")
    torch.set_num_threads(args.threads)
    base = {"device": args.device, "threads": args.threads, "batch": args.batch, "samples_per_particle": args.samples}
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({**base, "error": "CUDA requested but not available"}))
        return
    model = build_model(args).to(args.device)
    if not args.no_freeze:
        model.freeze_for_inference()  # as `cryoconf sbi infer` runs it
    images = torch.randn(args.batch, model.box, model.box, generator=torch.Generator().manual_seed(0))
    def best_time(run) -> float:
        run(images[:8])  # warm-up
        times = []
        for _ in range(args.repeats):
            synchronize(model.device)
            t0 = time.perf_counter()
            run(images)
            synchronize(model.device)
            times.append(time.perf_counter() - t0)
        return min(times)

    best = best_time(lambda x: model.sample(x, args.samples))
    summaries = None
    if len(model.parameter_names) == 1:
        summaries = best_time(lambda x: model.summarize(x))
    prepare = None
    if args.input_box:
        prepare = time_preparation(model, args)
        network = best if summaries is None else summaries
    print(json.dumps({
        "particles_per_s": round(args.batch / best, 1),
        **base,
        "box": model.box,
        "apix_A": model.spec["apix_A"],
        "embedding": model.spec["embedding"]["name"],
        "frozen_embedding": model.frozen_for_inference,
        "ms_per_particle": round(1e3 * best / args.batch, 3),
        "flow_summaries_particles_per_s": None if summaries is None else round(args.batch / summaries, 1),
        "flow_summaries_ms_per_particle": None if summaries is None else round(1e3 * summaries / args.batch, 3),
        "input_box": args.input_box,
        "input_apix_A": args.input_apix,
        "prepare_ms_per_particle": None if prepare is None else round(1e3 * prepare / args.batch, 3),
        "end_to_end_particles_per_s": None if prepare is None else round(args.batch / (prepare + network), 1),
        "repeats": args.repeats,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
