#!/usr/bin/env bash
# One call on a lent GPU machine: the GPU tests and the GPU figures of docs/sbi.md, written to $OUT.
#   here:   bash benchmarks/gpu_prepare.sh
#   device: run(command="bash benchmarks/gpu_session.sh", carry=[".gpu"], timeout_s=600)
# Every step writes its own file, so a step that fails or runs out of time leaves the others' results:
# env.txt, tests_gpu.txt, throughput_*.json, train_*.json, baseline.json, tests_all.txt (the whole
# suite, last, with what time is left). A dry run of the script here, on the CPU, in ~3 minutes:
#   DEVICE=cpu STEPS=10 ORIENTATIONS=576 OUT=/tmp/gpu_dry bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-300}
ORIENTATIONS=${ORIENTATIONS:-36864}
source benchmarks/gpu_env.sh
if [ "$DEVICE" = cuda ]; then
    nvidia-smi > "$OUT/env.txt" 2>&1
else
    export CRYOCONF_TEST_DEVICE=cpu  # tests/test_gpu.py with the CPU in the GPU's place
fi
python3 -c "import torch, cryoconf; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" >> "$OUT/env.txt" 2>&1
# 1. the GPU tests: tests/test_gpu.py and the device-parametrised preparation tests
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_data_preprocess.py \
    > "$OUT/tests_gpu.txt" 2>&1
# 2. sbi infer's throughput: embedding + 1,000 samples, flow summaries, and the preparation of raw 256-px particles
for cfg in sbi_hsp90_box128_s2d_ft sbi_hsp90_box128; do
    timeout 120 python3 benchmarks/sbi_throughput.py --config configs/$cfg.yaml --device "$DEVICE" --batch 1024 \
        --input-box 256 --input-apix 1.06 > "$OUT/throughput_$cfg.json" 2>&1
done
# 3. training speed on the Hsp90 templates: the compact CNN (box 128, space-to-depth) and ResNet-18 (box 128)
models=${CRYOCONF_SHARED_DATA:-../shared/data}/hsp90/hsp90_models.pt
for cfg in sbi_hsp90_box128_s2d sbi_hsp90_box128; do
    timeout 180 python3 benchmarks/sbi_train_hsp90.py --config configs/$cfg.yaml --models "$models" \
        --steps "$STEPS" --device "$DEVICE" -o "/tmp/gpu_session_$cfg" > "$OUT/train_$cfg.json" 2>&1
done
# 4. the explicit-likelihood baseline per particle (the paper's 36,864 orientations, box 128 at 1.5 Å/px)
timeout 120 python3 benchmarks/baseline_cost.py --box 128 --apix 1.5 --orientations "$ORIENTATIONS" --particles 32 \
    --device "$DEVICE" > "$OUT/baseline.json" 2>&1
# 5. the whole suite, in the time that is left
[ "$DEVICE" = cuda ] && timeout 150 python3 -m pytest -q -p no:cacheprovider -n 8 > "$OUT/tests_all.txt" 2>&1
tail -n 3 "$OUT"/tests_*.txt
for f in "$OUT"/*.json; do echo "== $f"; tail -c 1500 "$f"; echo; done
