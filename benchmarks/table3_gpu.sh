#!/usr/bin/env bash
# The GPU numbers of docs/benchmarks.md, bf16: Table 3 sizes (340M with the r sweep of Figure 3b, then 740M), with the
# decode step eager and replayed from CUDA graphs; then self-speculative decoding at 55M (last section).
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
# Self-speculative decoding (docs/benchmarks.md): a trained 55M IIET r=3 with an explicit first layer (CKPT, by default
# the one benchmarks/evidence_gpu.sh trains) drafting with its Lower Bound, k = 2, 4, 6, beside plain decoding of the
# same weights, a Lower Bound and Transformer++; greedy, then sampled (varied text: realistic acceptance). Without a
# checkpoint, random 55M weights (their acceptance is meaningless: the table flags it; speeds per round still hold).
ckpt=${CKPT:-bench_results/evidence_gpu/study-fl/runs/iiet-r3-s0/final}
[ -f "$ckpt/config.json" ] && base=$ckpt && text=(--prompt_text "${WIKITEXT:-../shared/data/wikitext-2-raw}/valid.raw") \
  || { base=iiet-fl; text=(); }
spec="[transformer++, lower-bound, $base, $base+draft:k=2, $base+draft:k=4, $base+draft:k=6]"
for sampling in "" "--temperature 1 --top_k 50"; do
  # shellcheck disable=SC2086
  timeout 150 "$py" benchmarks/inference.py --preset 55M --prompt_len 128 --new_tokens 64 --repeats 3 --device cuda \
    --batch_sizes '[1, 8]' --models "$spec" "${text[@]}" $sampling \
    --output_dir "$out/55m_speculative$([ -n "$sampling" ] && echo _sampled)"
done
