#!/usr/bin/env bash
# Evidence GPU tier (issue 16; docs/results.md): the 55M preset on one H100/H200 in under 10 minutes.
# Arms: Transformer++, IIET r=3 with the first layer explicit and as in the paper (every layer iterating), PCformer
# (as in the paper and with the first layer explicit, each through IIAD),
# and the compute-matched Transformer++ (training FLOPs: more tokens; inference FLOPs: deeper), then IIAD, the
# held-out evaluation and the benchmark; each study directory is resumable (rerun the script to continue).
# Usage: benchmarks/evidence_gpu.sh [OUTPUT_DIR]   env: DATA (raw text), TOKENS (per model), PYTHON
set -euo pipefail
out=${1:-bench_results/evidence_gpu}
data=${DATA:-../shared/data/enwiki-extract}
tokens=${TOKENS:-5000000}
iiet=("${PYTHON:-python3}" -m iiet.cli)
mkdir -p "$out"
# A 32k BPE as Table 4's vocabulary; sequences of 512 (the corpus is 15M tokens: a short context keeps 29k sequences).
[ -f "$out/tok32k/tokenizer.json" ] || "${iiet[@]}" tokenizer-train --sources+ "$data" --output_dir "$out/tok32k" \
  --vocab_size 32000
[ -f "$out/data/meta.json" ] || "${iiet[@]}" data-prepare --sources+ "$data" --tokenizer "$out/tok32k" \
  --output_dir "$out/data" --seq_len 512 --val_fraction 0.01
common=(--preset 55M --data "$out/data" --seq_len 512 --train_tokens "$tokens" --batch_tokens 65536
  --micro_batch_size 32 --lr 1e-3 --warmup_ratio 0.05 --seeds 1 --device cuda --influence_segments 200
  --eval_texts "[${WIKITEXT:-../shared/data/wikitext-2-raw}/test.raw]" --eval_corpora '[builtin]' --eval_documents 100)
timeout 420 "${iiet[@]}" reproduce --output_dir "$out/study-fl" "${common[@]}" --tier evidence-gpu \
  --arms '[transformer++, pcformer, pcformer-fl, iiet-r3]' --explicit_first_layer true --compute_matched true
timeout 120 "${iiet[@]}" reproduce --output_dir "$out/study-paper" "${common[@]}" --tier evidence-gpu \
  --arms '[iiet-r3]' --explicit_first_layer false --bench false
echo "reports: $out/study-fl/results.md $out/study-paper/results.md"
