#!/usr/bin/env bash
# REALM on the demo corpus, end to end on the CPU (BERT -> ICT -> REALM):
#   1. the demo data (examples/run_demo.sh with DEMO_ITERS=0): Python's documentation as loose JSON
#      (corpus.json), split into sentences (bert_text_sentence) with one title per document;
#   2. pretrain a tiny BERT (masked LM + sentence order);
#   3. ICT-train the retriever from it (one shared tower, 128-d projection, as examples/ict_demo.sh);
#   4. embed every block of the corpus with the context tower (tools/create_doc_index.py);
#   5. REALM (pretrain_realm.py): salient-span queries from corpus.json, 8 candidates (null document +
#      7 retrieved, the query's own document dropped), index refreshed every REFRESH iterations;
#   6. the baseline: the same BERT trained on the same queries for the same number of steps without
#      retrieval (--realm-num-candidates 1: the reader reads the query alone);
#   7. both evaluated on the held-out test documents (the --split test share, never trained on):
#      masked-span accuracy and, for REALM, retrieval_utility.
# Everything goes under $DEMO_DIR (default ./demo); sizes and lengths are environment overrides (the CI
# test runs it with a few iterations).
set -euo pipefail
# The interpreter to run (its torch and this package): PYTHON=/path/to/venv/bin/python to choose one.
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-demo}
WORKERS=${WORKERS:-2}
# Defaults: the run in benchmarks/RESULTS.md (about 25 minutes on a loaded 2-core CPU).
BERT_ITERS=${BERT_ITERS:-80}
ICT_ITERS=${ICT_ITERS:-400}
REALM_ITERS=${REALM_ITERS:-300}
REFRESH=${REFRESH:-100}
HIDDEN=${HIDDEN:-64}
LAYERS=${LAYERS:-2}
HEADS=${HEADS:-4}
BLOCK_SEQ=${BLOCK_SEQ:-48}
QUERY_SEQ=${QUERY_SEQ:-16}
BATCH=${BATCH:-16}
ICT_BATCH=${ICT_BATCH:-32}
REALM_BATCH=${REALM_BATCH:-8}
REALM_LR=${REALM_LR:-1e-3}
EVAL_ITERS=${EVAL_ITERS:-25}
SPLIT=${SPLIT:-85,5,10}
CKPT="$DEMO_DIR/checkpoints"
VOCAB=$("$PYTHON" -c "from megatron.tokenizer import bert_uncased_vocab_path; print(bert_uncased_vocab_path())")
BODY="$DEMO_DIR/bert_text_sentence"
TITLES="$DEMO_DIR/bert_title_sentence"
# The reader reads [CLS] query [SEP] title [SEP] block [SEP]: QUERY_SEQ + BLOCK_SEQ - 1 positions.
POSITIONS=$((QUERY_SEQ + BLOCK_SEQ - 1))
POSITIONS=$(( (POSITIONS + 63) / 64 * 64 ))
MODEL="--num-layers $LAYERS --hidden-size $HIDDEN --num-attention-heads $HEADS --max-position-embeddings $POSITIONS"
RETRIEVER="--ict-head-size $HIDDEN --biencoder-shared-query-context-model"

if [ ! -f "$BODY.idx" ] || [ ! -f "$TITLES.idx" ] || [ ! -f "$DEMO_DIR/corpus.json" ]; then
    DEMO_DIR="$DEMO_DIR" DEMO_ITERS=0 WORKERS="$WORKERS" bash examples/run_demo.sh
fi
rm -rf "$CKPT/realm_bert" "$CKPT/realm_ict" "$CKPT/realm" "$CKPT/realm_no_retrieval" "$DEMO_DIR/realm_blocks"

echo "== 2. BERT pretraining ($BERT_ITERS iterations)"
"$PYTHON" pretrain_bert.py $MODEL --seq-length "$POSITIONS" \
    --micro-batch-size "$BATCH" --global-batch-size "$BATCH" --train-iters "$BERT_ITERS" \
    --data-path "$BODY" --vocab-file "$VOCAB" --split "$SPLIT" \
    --lr 1e-3 --min-lr 1e-4 --lr-decay-style linear --lr-warmup-fraction .05 --weight-decay 1e-2 --clip-grad 1.0 \
    --log-interval 50 --eval-interval 100000 --eval-iters 5 --num-workers 0 \
    --save "$CKPT/realm_bert" --save-interval 100000

echo "== 3. ICT pretraining from the BERT ($ICT_ITERS iterations)"
"$PYTHON" pretrain_ict.py $MODEL $RETRIEVER --seq-length "$BLOCK_SEQ" \
    --micro-batch-size "$ICT_BATCH" --global-batch-size "$ICT_BATCH" --train-iters "$ICT_ITERS" \
    --bert-load "$CKPT/realm_bert" --save "$CKPT/realm_ict" --save-interval 100000 \
    --data-path "$BODY" --titles-data-path "$TITLES" --vocab-file "$VOCAB" --split "$SPLIT" \
    --lr 1e-3 --lr-decay-style linear --weight-decay 1e-2 --clip-grad 1.0 --lr-warmup-fraction .05 \
    --query-in-block-prob 0.1 --log-interval 50 --eval-interval 100000 --eval-iters 5 --num-workers 0

echo "== 4. block embedding index of the whole corpus"
"$PYTHON" tools/create_doc_index.py $MODEL $RETRIEVER --seq-length "$BLOCK_SEQ" --micro-batch-size "$BATCH" \
    --ict-load "$CKPT/realm_ict" --data-path "$BODY" --titles-data-path "$TITLES" --vocab-file "$VOCAB" \
    --block-data-path "$DEMO_DIR/realm_blocks" --indexer-batch-size 64 --indexer-log-interval 50

REALM_COMMON="$MODEL $RETRIEVER --seq-length $BLOCK_SEQ --query-seq-length $QUERY_SEQ
    --micro-batch-size $REALM_BATCH --global-batch-size $REALM_BATCH --train-iters $REALM_ITERS
    --ict-load $CKPT/realm_ict --bert-load $CKPT/realm_bert
    --data-path $BODY --titles-data-path $TITLES --salient-span-json $DEMO_DIR/corpus.json
    --vocab-file $VOCAB --split $SPLIT --masking-style salient
    --lr $REALM_LR --lr-decay-style linear --lr-warmup-fraction .05 --weight-decay 1e-2 --clip-grad 1.0
    --log-interval 25 --eval-interval 100000 --eval-iters $EVAL_ITERS --num-workers 0 --save-interval 100000"

echo "== 5. REALM ($REALM_ITERS iterations, 8 candidates, index refreshed every $REFRESH iterations)"
"$PYTHON" pretrain_realm.py $REALM_COMMON --realm-num-candidates 8 --index-refresh-interval "$REFRESH" \
    --block-data-path "$DEMO_DIR/realm_blocks" --save "$CKPT/realm" | tee "$DEMO_DIR/realm.log"

echo "== 6. the same BERT, same queries and steps, without retrieval"
"$PYTHON" pretrain_realm.py $REALM_COMMON --realm-num-candidates 1 --save "$CKPT/realm_no_retrieval" \
    | tee "$DEMO_DIR/realm_no_retrieval.log"

echo "== 7. held-out masked-span accuracy (test documents, $EVAL_ITERS batches of $REALM_BATCH queries)"
"$PYTHON" - "$DEMO_DIR/realm.log" "$DEMO_DIR/realm_no_retrieval.log" <<'EOF'
import re
import sys

def test_line(path):
    text = open(path, encoding="utf-8").read()
    line = [l for l in text.splitlines() if l.startswith(" test loss at the end of training")][-1]
    return {k.strip(): float(v) for k, v in re.findall(r"\| ([^|]+?) value: (\S+)", line)}

realm, plain = test_line(sys.argv[1]), test_line(sys.argv[2])
print(f"{'held-out (test documents)':32s} | {'span acc %':>10s} | {'token acc %':>11s} | {'marginal loss':>13s} | "
      f"{'retrieval_utility':>17s}")
for name, row in (("BERT without retrieval", plain), ("REALM (8 candidates)", realm)):
    utility = f"{row['retrieval_utility']:17.4f}" if "source_doc_in_topk" in row else f"{'-':>17s}"
    print(f"{name:32s} | {row['masked_span_acc']:10.2f} | {row['masked_token_acc']:11.2f} | "
          f"{row['marginal loss']:13.4f} | {utility}")
EOF
