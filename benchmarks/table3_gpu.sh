#!/usr/bin/env bash
# The GPU numbers of docs/benchmarks.md, bf16: Table 3 sizes (340M with the r sweep of Figure 3b, then 740M), with the
# decode step eager and replayed from CUDA graphs.
# Each run is capped so that one slow run cannot starve the others.
# Usage: benchmarks/table3_gpu.sh OUTPUT_DIR   (needs jsonargparse; see docs/benchmarks.md)
set -uo pipefail
out=${1:-bench_results/gpu}
py=${PYTHON:-python3}
mkdir -p "$out"
common=(--prompt_len 128 --new_tokens 32 --repeats 3 --device cuda --batch_sizes '[1, 8, 32]')
sweep='[transformer++, pcformer, iiet, e-iiet, lower-bound, iiet=1, iiet=2]'
for graphs in false true; do
  suffix=$([ "$graphs" = true ] && echo _graphs || echo "")
  timeout 150 "$py" benchmarks/inference.py --preset 340M "${common[@]}" --cuda_graphs $graphs --models "$sweep" \
    --output_dir "$out/340m$suffix"
  timeout 120 "$py" benchmarks/inference.py --preset 740M "${common[@]}" --cuda_graphs $graphs \
    --output_dir "$out/740m$suffix"
done
