#!/usr/bin/env bash
# One call on a lent GPU machine: fine-tune the box-128 compact CNN (configs/sbi_hsp90_box128_s2d_gpu.yaml,
# batch 1,024) from a CPU-trained checkpoint for as many steps as fit in BUDGET_S seconds, so that the
# cosine schedule ends in time; the final checkpoint and the loss curve come back in $OUT.
#   here:   bash benchmarks/gpu_prepare.sh; mkdir -p .gpu/init; cp runs/hsp90_box128_s2d_ft/checkpoint.N.pt .gpu/init/
#   device: run(command="bash benchmarks/gpu_finetune.sh", carry=[".gpu"], timeout_s=600)
#   after:  a run directory of the returned config.yaml and checkpoint (docs/sbi.md), then benchmarks/sbi_hsp90.py --run
# Over several calls (a call may run 10 minutes): TOTAL_S is the training time of them all, from which the
# first call plans the steps of one cosine schedule; each call trains BUDGET_S seconds of it, and a later
# call on the same (warm) machine resumes the run with --load latest.
#   device: run(command="TOTAL_S=1000 BUDGET_S=480 bash benchmarks/gpu_finetune.sh", carry=[".gpu"]), then
#           run(command="BUDGET_S=540 bash benchmarks/gpu_finetune.sh") within the machine's warm time
# A dry run here, on the CPU: DEVICE=cpu BUDGET_S=30 OUT=/tmp/ft_dry bash benchmarks/gpu_finetune.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-460}
CONFIG=${CONFIG:-configs/sbi_hsp90_box128_s2d_gpu.yaml}
TOTAL_S=${TOTAL_S:-$BUDGET_S}
RUN=${RUN:-/tmp/gpu_finetune_run}
source benchmarks/gpu_env.sh
minutes() { python3 -c "print($1 / 60)"; }  # seconds → the minutes --time-limit takes
if ls "$RUN"/checkpoint.*.pt > /dev/null 2>&1; then
    # a later call: the run a first call planned goes on from its newest checkpoint, with its own config.yaml
    echo "resuming $RUN for at most $BUDGET_S s" | tee "$OUT/plan.txt"
    python3 -m cryoconf sbi train "$RUN/config.yaml" -o "$RUN" --load latest --device "$DEVICE" \
        --time-limit "$(minutes "$BUDGET_S")" --no-progress 2>&1 | tail -n 20 >> "$OUT/plan.txt"
else
    INIT=${INIT:-$(ls .gpu/init/checkpoint.*.pt | head -n 1)}
    models=${CRYOCONF_SHARED_DATA:-../shared/data}/hsp90/hsp90_models.pt
    # 1. a timed probe at this config's batch (it also builds configs/hsp90_ensemble.npz). Its rate counts the
    #    warm-up: 40 steps gave 7.9 steps/s on an H100 where the run then made 14.3, so the run used half its
    #    budget; 200 steps come closer, and --time-limit below still stops a run the probe misjudged.
    python3 benchmarks/sbi_train_hsp90.py --config "$CONFIG" --models "$models" --steps "${PROBE_STEPS:-200}" --device "$DEVICE" \
        -o /tmp/gpu_finetune_probe > "$OUT/probe.json" || { cat "$OUT/probe.json"; exit 1; }
    steps=$(python3 -c "import json; print(max(10, int(0.92 * json.load(open('$OUT/probe.json'))['steps_per_s'] * $TOTAL_S)))")
    echo "probe: $(grep steps_per_s "$OUT/probe.json"); training $steps steps from $INIT" | tee "$OUT/plan.txt"
    # 2. the fine-tuning; in one call --time-limit only guards against a probe that was too optimistic, over
    #    several it ends this call's share with a checkpoint
    rm -rf "$RUN"
    limit_s=$(python3 -c "print($BUDGET_S + 60 if $TOTAL_S <= $BUDGET_S else $BUDGET_S)")
    python3 -m cryoconf sbi train "$CONFIG" -o "$RUN" --init "$INIT" --device "$DEVICE" --steps "$steps" \
        --time-limit "$(minutes "$limit_s")" --no-progress 2>&1 | tail -n 20 >> "$OUT/plan.txt"
fi
# 3. what comes back: the newest checkpoint (≤ 16 MiB, else without the optimiser state), config, log, losses
python3 - "$RUN" "$OUT" <<'PY'
import shutil
import sys
from pathlib import Path
import torch
from cryoconf.rundir import resolve_checkpoint
run, out = Path(sys.argv[1]), Path(sys.argv[2])
newest = resolve_checkpoint("latest", run)  # raises, naming the run, when none was written
if newest.stat().st_size > 16_000_000:  # only the weights are needed to evaluate the model
    ck = torch.load(newest, map_location="cpu", weights_only=False)
    ck.pop("optimizer_state", None)
    torch.save(ck, out / newest.name)
else:
    shutil.copy(newest, out / newest.name)
for name in ("config.yaml", "run.log", "loss.csv", "loss.png"):
    if (run / name).exists():
        shutil.copy(run / name, out / name)
print("returned", newest.name, (out / newest.name).stat().st_size, "bytes")
PY
