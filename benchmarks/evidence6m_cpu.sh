#!/usr/bin/env bash
# The 6M-token compute-matched evidence tier of docs/results.md on a CPU, continued from its committed record: the
# script prepares the data (the 8k BPE of the Wikipedia extract and sequences of 256, the same tokenizer hash as the
# record), merges docs/results/evidence-6m/results.json (`--merge_results`) and trains only the runs the record does
# not hold, WORKERS at a time with one CPU thread each: pretraining, evaluation and IIAD (influence, plans and
# distillation on the lowest seed of IIET r=3 and of the PCformer that has a checkpoint here; a student the record
# holds is not distilled again), no benchmark. The arms include the paper's IIET (every layer iterating,
# `e-iiet=3,3,3,3`) beside the explicit-first-layer ones. Rerun the script to continue: finished runs are skipped,
# interrupted ones resume from their checkpoints; a fresh machine starts again from the record.
# The report (results.md, results.json, figures) is copied to REPORT_DIR.
# Usage: benchmarks/evidence6m_cpu.sh [OUTPUT_DIR] [REPORT_DIR]     (from the repository root)
# env: DATA (raw text), WIKITEXT (dir with valid.raw, test.raw), RECORD (results.json to merge; empty: none),
#   ARMS, SEEDS, WORKERS (default: the number of cores), PRESET, TOKENS, VOCAB, EVAL_DOCUMENTS,
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
  --batch_tokens 4096 --micro_batch_size 16 --lr 1e-3 --warmup_ratio 0.05 --device cpu --workers "$workers"
  --eval_texts "[$wikitext/valid.raw, $wikitext/test.raw]" --eval_corpora '[builtin]'
  --eval_documents "${EVAL_DOCUMENTS:-200}" --tier evidence --iiad true --bench false)
merge=()
[ -n "$record" ] && merge=(--merge_results "[$record]")
# e-iiet=3,3,3,3 is the paper's IIET r=3, every layer iterating: it keeps its plan in this explicit-first-layer study
arms=${ARMS:-'[transformer++, iiet-r3, dlcl, iiet-r1, iiet-r2, pcformer-fl, "e-iiet=3,3,3,3"]'}
status=0
"${iiet[@]}" reproduce --output_dir "$out/study6m" "${common[@]}" --seeds "${SEEDS:-2}" \
  --arms "$arms" --explicit_first_layer true --compute_matched true "${merge[@]}" || status=$?
if [ -f "$out/study6m/results.md" ]; then
  cp -r "$out/study6m/results.md" "$out/study6m/results.json" "$out/study6m/figures" "$reports/"
fi
echo "reports: $reports (exit status $status; rerun the script to continue an interrupted study)"
exit "$status"
