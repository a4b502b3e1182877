#!/usr/bin/env bash
# Open-domain QA (ORQA) on the demo corpus, end to end on the CPU (BERT -> ICT -> index -> ORQA):
#   1. the demo data (examples/run_demo.sh with DEMO_ITERS=0): Python's documentation as loose JSON
#      (corpus.json), split into sentences (bert_text_sentence) with one title per document;
#   2. evidence passages and cloze questions whose answers are spans of known passages
#      (tools/make_orqa_demo_questions.py), split into train/dev/test questions;
#   3. pretrain a tiny BERT, then ICT-train the retriever from it (one shared tower, as examples/ict_demo.sh);
#   4. embed every evidence passage with the context tower (tools/create_doc_index.py): the frozen store;
#   5. ORQA fine-tuning (tasks/main.py --task ORQA): query tower + span reader, top-BEAM blocks, the
#      best dev exact match kept; then ORQA-EVAL of that checkpoint on the held-out test questions;
#   6. the baseline: the same reader fine-tuned and evaluated on BEAM random blocks (--orqa-random-retrieval);
#   7. a table: test exact match and recall@5 of both.
# Everything goes under $DEMO_DIR (default ./demo); sizes are environment overrides.
set -euo pipefail
# The interpreter to run (its torch and this package): PYTHON=/path/to/venv/bin/python to choose one.
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-demo}
WORKERS=${WORKERS:-2}
BERT_ITERS=${BERT_ITERS:-300}
ICT_ITERS=${ICT_ITERS:-1000}
EPOCHS=${EPOCHS:-6}
HIDDEN=${HIDDEN:-128}
LAYERS=${LAYERS:-2}
HEADS=${HEADS:-4}
BLOCK_SEQ=${BLOCK_SEQ:-80}
QUESTION_SEQ=${QUESTION_SEQ:-48}
PASSAGE_WORDS=${PASSAGE_WORDS:-40}
NUM_QUESTIONS=${NUM_QUESTIONS:-2000}
BATCH=${BATCH:-32}
QA_BATCH=${QA_BATCH:-16}
BEAM=${BEAM:-5}
LR=${LR:-1e-3}
# The query tower's learning rate is LR x RETRIEVER_LR_MULT: at the reader's rate this small tower
# loses its retrieval within an epoch (see benchmarks/RESULTS.md).
RETRIEVER_LR_MULT=${RETRIEVER_LR_MULT:-0.1}
# ICT keeps the query sentence in its block this often (ORQA's ICT: 0.1). The demo's questions are
# sentences of their passages, so the retriever is taught to find a sentence's own block.
QUERY_IN_BLOCK=${QUERY_IN_BLOCK:-0.9}
CKPT="$DEMO_DIR/checkpoints"
QA="$DEMO_DIR/orqa"
VOCAB=$("$PYTHON" -c "from megatron.tokenizer import bert_uncased_vocab_path; print(bert_uncased_vocab_path())")
BODY="$DEMO_DIR/bert_text_sentence"
TITLES="$DEMO_DIR/bert_title_sentence"
# The reader reads [CLS] question [SEP] title [SEP] passage [SEP]: QUESTION_SEQ + BLOCK_SEQ - 1 positions.
POSITIONS=$(( (QUESTION_SEQ + BLOCK_SEQ - 1 + 63) / 64 * 64 ))
MODEL="--num-layers $LAYERS --hidden-size $HIDDEN --num-attention-heads $HEADS --max-position-embeddings $POSITIONS"
RETRIEVER="--ict-head-size $HIDDEN --biencoder-shared-query-context-model"

if [ ! -f "$BODY.idx" ] || [ ! -f "$TITLES.idx" ] || [ ! -f "$DEMO_DIR/corpus.json" ]; then
    DEMO_DIR="$DEMO_DIR" DEMO_ITERS=0 WORKERS="$WORKERS" bash examples/run_demo.sh
fi
rm -rf "$CKPT/orqa_bert" "$CKPT/orqa_ict" "$CKPT/orqa" "$CKPT/orqa_random" "$QA/blocks" "$QA/blocks.provenance.json"

echo "== 2. evidence passages and questions"
"$PYTHON" tools/make_orqa_demo_questions.py --input "$DEMO_DIR/corpus.json" --output-dir "$QA" \
    --passage-words "$PASSAGE_WORDS" --num-questions "$NUM_QUESTIONS"

echo "== 3a. BERT pretraining ($BERT_ITERS iterations)"
"$PYTHON" pretrain_bert.py $MODEL --seq-length "$BLOCK_SEQ" \
    --micro-batch-size "$BATCH" --global-batch-size "$BATCH" --train-iters "$BERT_ITERS" \
    --data-path "$BODY" --vocab-file "$VOCAB" --split 98,1,1 \
    --lr 1e-3 --min-lr 1e-4 --lr-decay-style linear --lr-warmup-fraction .05 --weight-decay 1e-2 --clip-grad 1.0 \
    --log-interval 50 --eval-interval 100000 --eval-iters 5 --num-workers 0 \
    --save "$CKPT/orqa_bert" --save-interval 100000

echo "== 3b. ICT pretraining from the BERT ($ICT_ITERS iterations)"
"$PYTHON" pretrain_ict.py $MODEL $RETRIEVER --seq-length "$BLOCK_SEQ" \
    --micro-batch-size "$BATCH" --global-batch-size "$BATCH" --train-iters "$ICT_ITERS" \
    --bert-load "$CKPT/orqa_bert" --save "$CKPT/orqa_ict" --save-interval 100000 \
    --data-path "$BODY" --titles-data-path "$TITLES" --vocab-file "$VOCAB" --split 98,1,1 \
    --lr 1e-3 --lr-decay-style linear --weight-decay 1e-2 --clip-grad 1.0 --lr-warmup-fraction .05 \
    --query-in-block-prob "$QUERY_IN_BLOCK" --log-interval 50 --eval-interval 100000 --eval-iters 5 --num-workers 0

echo "== 4. frozen evidence embeddings"
"$PYTHON" tools/create_doc_index.py $MODEL $RETRIEVER --seq-length "$BLOCK_SEQ" --micro-batch-size "$BATCH" \
    --ict-load "$CKPT/orqa_ict" --evidence-data-path "$QA/evidence.tsv" --retriever-seq-length "$BLOCK_SEQ" \
    --vocab-file "$VOCAB" --block-data-path "$QA/blocks" --indexer-batch-size 64 --indexer-log-interval 50

COMMON="$MODEL $RETRIEVER --seq-length $BLOCK_SEQ --vocab-file $VOCAB
    --evidence-data-path $QA/evidence.tsv --retriever-seq-length $BLOCK_SEQ --question-seq-length $QUESTION_SEQ
    --block-data-path $QA/blocks --reader-beam-size $BEAM --max-span-width 10
    --retriever-report-topk-accuracies 1 5 --micro-batch-size $QA_BATCH"
TRAIN="--task ORQA $COMMON --global-batch-size $QA_BATCH --epochs $EPOCHS
    --retriever-load $CKPT/orqa_ict --reader-load $CKPT/orqa_bert
    --train-data $QA/train.tsv --qa-data-dev $QA/dev.tsv
    --lr $LR --retriever-lr-mult $RETRIEVER_LR_MULT --lr-decay-style linear --lr-warmup-fraction .05 --weight-decay 1e-2 --clip-grad 1.0
    --log-interval 20 --save-interval 100000"

echo "== 5. ORQA fine-tuning (top-$BEAM retrieved blocks, $EPOCHS epochs)"
"$PYTHON" tasks/main.py $TRAIN --save "$CKPT/orqa" | tee "$DEMO_DIR/orqa.log"
"$PYTHON" tasks/main.py --task ORQA-EVAL $COMMON --load "$CKPT/orqa" --qa-data-test "$QA/test.tsv" \
    | tee "$DEMO_DIR/orqa_test.log"

echo "== 6. the same reader on $BEAM random blocks"
"$PYTHON" tasks/main.py $TRAIN --orqa-random-retrieval --save "$CKPT/orqa_random" | tee "$DEMO_DIR/orqa_random.log"
"$PYTHON" tasks/main.py --task ORQA-EVAL $COMMON --orqa-random-retrieval --load "$CKPT/orqa_random" \
    --qa-data-test "$QA/test.tsv" | tee "$DEMO_DIR/orqa_random_test.log"

echo "== 7. held-out test questions"
"$PYTHON" - "$DEMO_DIR/orqa_test.log" "$DEMO_DIR/orqa_random_test.log" <<'EOF'
import re
import sys

def numbers(path):
    text = open(path, encoding="utf-8").read()
    em = re.search(r"test: (\d+) questions: exact match ([\d.]+) %", text)
    recall = re.search(r"test: recall@5 ([\d.]+) %", text)
    return int(em.group(1)), float(em.group(2)), float(recall.group(1))

print(f"{'test questions':40s} | {'n':>5s} | {'exact match %':>13s} | {'recall@5 %':>10s}")
for name, path in (("ORQA (retrieved blocks)", sys.argv[1]), ("same reader, random blocks", sys.argv[2])):
    n, em, recall = numbers(path)
    print(f"{name:40s} | {n:5d} | {em:13.2f} | {recall:10.2f}")
EOF
