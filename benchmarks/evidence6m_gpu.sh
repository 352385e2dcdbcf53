#!/usr/bin/env bash
# The 6M-token compute-matched evidence tier of docs/results.md (cpu-small, the 8k BPE of the Wikipedia extract,
# sequences of 256, 4,096 tokens per step), every arm, on one GPU: the same study the CPU runs for ~12 core-hours.
# Arms: Transformer++, IIET r=3 (first layer explicit), Transformer++ at IIET's training FLOPs and at its inference
# FLOPs (2 seeds where the issue asks), DLCL, IIET r=1, 2, PCformer (first layer explicit) and the paper's IIET
# (every layer iterating: `e-iiet=3,3,3,3`); pretraining and evaluation (no IIAD, no benchmark at this tier). The
# study is resumable: rerun the script to continue. The report (results.md, results.json, figures) is copied to
# REPORT_DIR, small enough to come back from a lent machine; the run directories stay in OUTPUT_DIR.
# Usage: benchmarks/evidence6m_gpu.sh [OUTPUT_DIR] [REPORT_DIR]
# env: DATA (raw text), WIKITEXT (dir with valid.raw, test.raw), TOKENS (per model), DEVICE, PRESET, PYTHON, LIMIT_S
#   CPU smoke of the script itself (a 2 MB slice of the corpus, short WikiText files in SMALL/):
#   DEVICE=cpu PRESET=tiny TOKENS=8192 VOCAB=512 EVAL_DOCUMENTS=5 DATA=slice.txt WIKITEXT=SMALL \
#     benchmarks/evidence6m_gpu.sh /tmp/e6
set -euo pipefail
out=${1:-bench_results/evidence6m_gpu}
reports=${2:-$out/reports}
data=${DATA:-../shared/data/enwiki-extract}
wikitext=${WIKITEXT:-../shared/data/wikitext-2-raw}
limit=${LIMIT_S:-420}
iiet=("${PYTHON:-python3}" -m iiet.cli)
mkdir -p "$out" "$reports"
[ -f "$out/tok/tokenizer.json" ] || "${iiet[@]}" tokenizer-train --sources+ "$data" --output_dir "$out/tok" \
  --vocab_size "${VOCAB:-8192}"
[ -f "$out/data/meta.json" ] || "${iiet[@]}" data-prepare --sources+ "$data" --tokenizer "$out/tok" \
  --output_dir "$out/data" --seq_len 256 --val_fraction 0.01
common=(--preset "${PRESET:-cpu-small}" --data "$out/data" --seq_len 256 --train_tokens "${TOKENS:-6000000}"
  --batch_tokens 4096 --micro_batch_size 16 --lr 1e-3 --warmup_ratio 0.05 --device "${DEVICE:-cuda}"
  --eval_texts "[$wikitext/valid.raw, $wikitext/test.raw]" --eval_corpora '[builtin]' --eval_documents "${EVAL_DOCUMENTS:-200}" --tier evidence
  --iiad false --bench false)
# e-iiet=3,3,3,3 is the paper's IIET r=3, every layer iterating: it keeps its plan in this explicit-first-layer study
arms='[transformer++, iiet-r3, dlcl, iiet-r1, iiet-r2, pcformer-fl, "e-iiet=3,3,3,3"]'
status=0
timeout "$limit" "${iiet[@]}" reproduce --output_dir "$out/study6m" "${common[@]}" --seeds 2 --arms "$arms" \
  --explicit_first_layer true --compute_matched true || status=$?
if [ "$status" -ne 0 ]; then  # cut short: the report of what finished (evaluation only, no training)
  timeout "${REPORT_S:-90}" "${iiet[@]}" reproduce --output_dir "$out/study6m" "${common[@]}" --seeds 2 \
    --arms "$arms" --explicit_first_layer true --compute_matched true --report_only true || true
fi
if [ -f "$out/study6m/results.md" ]; then  # copy the report back (rerun the script to continue a study cut short)
  mkdir -p "$reports/study6m"
  cp -r "$out/study6m/results.md" "$out/study6m/results.json" "$out/study6m/figures" "$reports/study6m/"
fi
echo "reports: $reports (exit status $status; rerun to continue an interrupted study)"
exit "$status"
