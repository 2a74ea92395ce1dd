#!/usr/bin/env bash
# Prepare, on this (CPU) machine, what benchmarks/gpu_session.sh needs on a lent GPU machine, in .gpu/
# (git-ignored; carried with the device tool's `carry: [".gpu"]`, ~40 MB of its 64 MiB):
#   .gpu/whl/          wheels of cryoconf's dependencies that the GPU image lacks (Python 3.12, x86-64)
#   .gpu/shared_data/  a copy of ../shared/data (the reference data the tests read; ../shared does not travel)
# The GPU image (see the device tool's KINDS.md) has torch with CUDA, numpy, scipy, pandas, matplotlib,
# tqdm, PyYAML, pytest and hypothesis; it cannot download anything.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${CRYOCONF_SHARED_DATA:-../shared/data}
rm -rf .gpu/whl && mkdir -p .gpu/whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .gpu/whl \
    mrcfile==1.5.4 zuko==1.6.0 pyro-ppl==1.9.2 pyro-api==0.1.2 gemmi==0.7.5 MDAnalysis==2.11.0 \
    GridDataFormats==1.2.0 mmtf-python==1.1.3 mda-xdrlib==0.2.0
if [ -d "$SHARED" ]; then
    rm -rf .gpu/shared_data && cp -r "$SHARED" .gpu/shared_data
else
    echo "no reference data at $SHARED: the tests that need it will skip on the GPU machine" >&2
fi
du -sh .gpu
