#!/usr/bin/env bash
# The CPU speed measurements behind the README's speed table and docs/drconv-speed.md, in one go (about 30
# minutes on the 2-core VM). Every ratio is against the baseline measured in the same process; FACEREC_ONEDNN=0
# runs the same code with the oneDNN GEMMs switched off (torch.mm / _grouped_mm, the code before they came).
# Outputs: docs/results/speed/<name>.md (override with OUT=...). Run on an otherwise idle machine.
#   bash benchmarks/speed_suite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-docs/results/speed}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 PYTHONPATH=.
run() { local name=$1; shift; echo "== $name: $*"; "$@" | tee "$OUT/$name.md"; }

run layer_t2 "$PY" benchmarks/drconv_layer.py --threads 2 --reps 10 --skip-all-m \
    --shapes 64,128,56 128,128,14 128,512,7
run layer_t2_no_onednn env FACEREC_ONEDNN=0 "$PY" benchmarks/drconv_layer.py --threads 2 --reps 10 --skip-all-m \
    --shapes 64,128,56 128,128,14 128,512,7
run layer_t1 env OMP_WAIT_POLICY=PASSIVE "$PY" benchmarks/drconv_layer.py --threads 1 --clock cpu --reps 3 \
    --skip-all-m
for gen in paper basis; do
    run "models_t2_$gen" "$PY" benchmarks/models.py --models mobilefacenet drconv_mobilefacenet --threads 2 \
        --repeats 3 --generator "$gen"
    run "models_t1_$gen" env OMP_WAIT_POLICY=PASSIVE "$PY" benchmarks/models.py --models mobilefacenet \
        drconv_mobilefacenet --threads 1 --repeats 2 --generator "$gen"
done
run models_t2_paper_no_onednn env FACEREC_ONEDNN=0 "$PY" benchmarks/models.py --models mobilefacenet \
    drconv_mobilefacenet --threads 2 --repeats 3 --generator paper
run models_ms1m_t2 "$PY" benchmarks/models.py --models mobilefacenet drconv_mobilefacenet condconv_mobilefacenet \
    local_mobilefacenet --threads 2 --repeats 2 --batch 64 --input-size 112x96 --classes 85742
# The model ratios with the paths switched in one process (interleaved; the figures the README quotes).
run paths_ab_threads_2_generator_paper "$PY" benchmarks/drconv_paths_ab.py --threads 2 --generator paper
run paths_ab_threads_2_generator_basis "$PY" benchmarks/drconv_paths_ab.py --threads 2 --generator basis
run paths_ab_threads_1_generator_paper "$PY" benchmarks/drconv_paths_ab.py --threads 1 --generator paper
run paths_ab_threads_2_batch_64_inputsize_112x96 "$PY" benchmarks/drconv_paths_ab.py --threads 2 --batch 64 \
    --input-size 112x96
