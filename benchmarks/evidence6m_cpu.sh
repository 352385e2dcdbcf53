#!/usr/bin/env bash
# The 6M-token compute-matched evidence tier of docs/results.md on a CPU, continued from its committed record: the
# script prepares the data (the 8k BPE of the Wikipedia extract and sequences of 256, the same tokenizer hash as the
# record), merges docs/results/evidence-6m/results.json (`--merge_results`) and trains only the runs the record does
# not hold, WORKERS at a time with one CPU thread each: pretraining and evaluation, no IIAD and no benchmark. With
# PAPER=true (the default) the paper's IIET, every layer iterating, trains at the same time on one of the cores, in
# a study of its own (other training settings). Rerun the script to continue: finished runs are skipped, interrupted
# ones resume from their checkpoints; a fresh machine starts again from the record.
# The report (results.md, results.json, figures) is copied to REPORT_DIR.
# Usage: benchmarks/evidence6m_cpu.sh [OUTPUT_DIR] [REPORT_DIR]     (from the repository root)
# env: DATA (raw text), WIKITEXT (dir with valid.raw, test.raw), RECORD (results.json to merge; empty: none),
#   ARMS, SEEDS, WORKERS (default: the number of cores), PAPER (true/false), PRESET, TOKENS, VOCAB, EVAL_DOCUMENTS,
#   PYTHON. CPU smoke of the script itself (a 2 MB slice of the corpus, short WikiText files in SMALL/):
#   RECORD= PRESET=tiny TOKENS=8192 VOCAB=512 EVAL_DOCUMENTS=5 DATA=slice.txt WIKITEXT=SMALL \
#     benchmarks/evidence6m_cpu.sh /tmp/e6c
set -euo pipefail
out=${1:-/work/evidence/cpu}
reports=${2:-$out/reports}
data=${DATA:-../shared/data/enwiki-extract}
wikitext=${WIKITEXT:-../shared/data/wikitext-2-raw}
record=${RECORD-docs/results/evidence-6m/results.json}
iiet=("${PYTHON:-python3}" -m iiet.cli)
workers=${WORKERS:-$(OMP_NUM_THREADS= nproc)}  # (nproc counts OMP_NUM_THREADS)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # one thread per run: two 2-thread runs on 2 cores run ~10x slower
mkdir -p "$out" "$reports"
[ -f "$out/tok/tokenizer.json" ] || "${iiet[@]}" tokenizer-train --sources+ "$data" --output_dir "$out/tok" \
  --vocab_size "${VOCAB:-8192}"
[ -f "$out/data/meta.json" ] || "${iiet[@]}" data-prepare --sources+ "$data" --tokenizer "$out/tok" \
  --output_dir "$out/data" --seq_len 256 --val_fraction 0.01 --num_proc "$workers"
common=(--preset "${PRESET:-cpu-small}" --data "$out/data" --seq_len 256 --train_tokens "${TOKENS:-6000000}"
  --batch_tokens 4096 --micro_batch_size 16 --lr 1e-3 --warmup_ratio 0.05 --device cpu
  --eval_texts "[$wikitext/valid.raw, $wikitext/test.raw]" --eval_corpora '[builtin]'
  --eval_documents "${EVAL_DOCUMENTS:-200}" --tier evidence --iiad false --bench false)  # --workers: below
merge=()
[ -n "$record" ] && merge=(--merge_results "[$record]")
studies=(study6m)
paper=""
if [ "${PAPER:-true}" = true ]; then  # every layer iterating: other training settings, so a study of its own,
  # trained beside the main one on a core of its own (its log in OUTPUT_DIR/study6m-paper.log)
  studies+=(study6m-paper)
  if [ "$workers" -gt 1 ]; then workers=$((workers - 1)); fi
  "${iiet[@]}" reproduce --output_dir "$out/study6m-paper" "${common[@]}" --workers 1 --seeds 1 --arms '[iiet-r3]' \
    --explicit_first_layer false --compute_matched false > "$out/study6m-paper.log" 2>&1 &
  paper=$!
fi
status=0
"${iiet[@]}" reproduce --output_dir "$out/study6m" "${common[@]}" --workers "$workers" --seeds "${SEEDS:-2}" \
  --arms "${ARMS:-[transformer++, iiet-r3, dlcl, iiet-r1, iiet-r2, pcformer-fl]}" --explicit_first_layer true \
  --compute_matched true "${merge[@]}" || status=$?
if [ -n "$paper" ]; then
  wait "$paper" || { status=$?; echo "the paper's IIET study failed: see $out/study6m-paper.log" >&2; }
fi
for study in "${studies[@]}"; do
  [ -f "$out/$study/results.md" ] || continue
  mkdir -p "$reports/$study"
  cp -r "$out/$study/results.md" "$out/$study/results.json" "$out/$study/figures" "$reports/$study/"
done
echo "reports: $reports (exit status $status; rerun the script to continue an interrupted study)"
exit "$status"
