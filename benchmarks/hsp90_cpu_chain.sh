#!/usr/bin/env bash
# Rebuild the Hsp90 SBI models of docs/sbi.md on a CPU, resumably, in as many calls as it takes.
#
#   bash benchmarks/hsp90_cpu_chain.sh                 # until done (about 9 h on 2 cores)
#   MINUTES=150 bash benchmarks/hsp90_cpu_chain.sh     # at most 150 min of training this call; run again to go on
#
# The stages (docs/sbi.md, "Hsp90 benchmark"), each a run directory under $RUNS (default runs/):
#   hsp90_box64             35,000 steps, box 64 at 3 Å/px                      configs/sbi_hsp90_box64.yaml
#   hsp90_box64_from128     12,000 steps on the paper's particles, resampled    configs/sbi_hsp90_box64_from128.yaml
#   hsp90_box128_s2d        12,000 steps at box 128, 1.5 Å/px (space_to_depth)  configs/sbi_hsp90_box128_s2d.yaml
#   hsp90_box128_s2d_ft     16,000 steps on fresh particles, lower rate         configs/sbi_hsp90_box128_s2d_ft.yaml
# then `cryoconf sbi symmetrize` on the last (the D4-pooled posterior's temperature).
# A stage whose final checkpoint exists is skipped; one with checkpoints resumes exactly (--load latest);
# a new one starts from the previous stage's final weights (--init). Each training call gets the time
# left (--time-limit), so a call that runs out stops at a checkpoint and the next call continues there.
# The documented box64_from128 run was trained to 6,000 steps and then stretched to 12,000
# (--load latest --steps 12000); this script runs its 12,000 steps in one schedule.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
MINUTES=${MINUTES:-100000}
deadline=$(( $(date +%s) + 60 * MINUTES ))

if [ ! -e configs/hsp90_ensemble.npz ]; then
    python benchmarks/sbi_train_hsp90.py --steps 0 >/dev/null   # builds the 20-model ensemble .npz
fi

previous=   # the final checkpoint of the stage before: where a new stage starts (--init)
stage() {  # stage NAME CONFIG STEPS
    local name=$1 config=$2 steps=$3 run=$RUNS/$1
    local final=$run/checkpoint.$steps.pt init=$previous
    previous=$final
    if [ -e "$final" ]; then
        echo "$name: done ($final)"
        return 0
    fi
    local left=$(( (deadline - $(date +%s)) / 60 ))
    if [ "$left" -lt 2 ]; then
        echo "$name: out of time; run this script again to go on"
        exit 0
    fi
    local start=()
    if compgen -G "$run/checkpoint.*.pt" >/dev/null; then
        start=(--load latest)
    elif [ -n "$init" ]; then
        start=(--init "$init")
    fi
    echo "$name: training to step $steps (${start[*]:-from scratch}), at most $left min"
    cryoconf sbi train "$config" -o "$run" --steps "$steps" "${start[@]}" --time-limit "$left" --no-progress
    if [ ! -e "$final" ]; then
        echo "$name: stopped at the time limit; run this script again to go on"
        exit 0
    fi
}

stage hsp90_box64 configs/sbi_hsp90_box64.yaml 35000
stage hsp90_box64_from128 configs/sbi_hsp90_box64_from128.yaml 12000
stage hsp90_box128_s2d configs/sbi_hsp90_box128_s2d.yaml 12000
stage hsp90_box128_s2d_ft configs/sbi_hsp90_box128_s2d_ft.yaml 16000

last_run=$(dirname "$previous")   # the last stage's run directory
if [ ! -e "$last_run/symmetry.json" ]; then
    cryoconf sbi symmetrize "$last_run"
fi
echo "done: $last_run. Benchmark it with"
echo "  python benchmarks/sbi_hsp90.py --run $last_run --symmetrize --orientations 36864"
