# Sourced by benchmarks/gpu_session.sh and gpu_finetune.sh (after `cd` to the repository root, with OUT
# and DEVICE set): on a GPU machine, install the wheels of .gpu/whl (benchmarks/gpu_prepare.sh) into
# /tmp/site and put them and src/ on PYTHONPATH; use the reference data copied into .gpu/ if there.
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ "$DEVICE" = cuda ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .gpu/whl/*.whl || { echo "installing .gpu/whl failed: run benchmarks/gpu_prepare.sh and carry .gpu" \
        | tee "$OUT/env.txt" >&2; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD/src
fi
if [ -d .gpu/shared_data ]; then export CRYOCONF_SHARED_DATA=$PWD/.gpu/shared_data; fi
