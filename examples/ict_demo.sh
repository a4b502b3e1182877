#!/usr/bin/env bash
# The REALM retriever's first stage on the demo corpus, end to end on the CPU:
#   1. the demo data (examples/run_demo.sh with DEMO_ITERS=0): Python's documentation split into
#      sentences (bert_text_sentence) with one title per document (bert_title_sentence);
#   2. pretrain a tiny BERT (masked LM + sentence order) on the training documents;
#   3. ICT-train a biencoder from it (pretrain_ict.py, Megatron's 2020 flag spellings);
#   4. embed every block of the corpus with the context tower (tools/create_doc_index.py), as the
#      retrieval index REALM searches;
#   5. held-out inverse-cloze retrieval (tools/eval_ict_heldout.py): from each block of the test
#      documents (never trained on) one sentence is cut; it must find its block among all the test
#      blocks. Rows: a random retriever, the BERT before ICT, the ICT retriever, and an off-the-shelf
#      sentence-transformers model for scale.
# Everything goes under $DEMO_DIR (default ./demo); sizes and lengths are environment overrides
# (the CI test runs it with a few iterations).
set -euo pipefail
# The interpreter to run (its torch and this package): PYTHON=/path/to/venv/bin/python to choose one.
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-demo}
WORKERS=${WORKERS:-2}
BERT_ITERS=${BERT_ITERS:-100}
ICT_ITERS=${ICT_ITERS:-600}
HIDDEN=${HIDDEN:-128}
LAYERS=${LAYERS:-2}
HEADS=${HEADS:-4}
SEQ=${SEQ:-64}
BATCH=${BATCH:-32}
SPLIT=${SPLIT:-85,5,10}
BASELINES=${BASELINES---sentence-transformer-baseline}
CKPT="$DEMO_DIR/checkpoints"
VOCAB=$("$PYTHON" -c "from megatron.tokenizer import bert_uncased_vocab_path; print(bert_uncased_vocab_path())")
BODY="$DEMO_DIR/bert_text_sentence"
TITLES="$DEMO_DIR/bert_title_sentence"
MODEL="--num-layers $LAYERS --hidden-size $HIDDEN --num-attention-heads $HEADS --seq-length $SEQ --max-position-embeddings $SEQ"
# One tower shared by queries and blocks: on a corpus this small, two towers drift apart and memorise
# the training blocks (held-out accuracy fell as training went on); a shared tower keeps a query's
# words and its block's words in one space and generalises (benchmarks/RESULTS.md).
ICT_MODEL="$MODEL --ict-head-size $HIDDEN --biencoder-shared-query-context-model"

if [ ! -f "$BODY.idx" ] || [ ! -f "$TITLES.idx" ]; then
    DEMO_DIR="$DEMO_DIR" DEMO_ITERS=0 WORKERS="$WORKERS" bash examples/run_demo.sh
fi
rm -rf "$CKPT/ict_bert" "$CKPT/ict" "$DEMO_DIR/embedded_blocks.pkl"

echo "== 2. BERT pretraining ($BERT_ITERS iterations)"
"$PYTHON" pretrain_bert.py $MODEL \
    --micro-batch-size "$BATCH" --global-batch-size "$BATCH" --train-iters "$BERT_ITERS" \
    --data-path "$BODY" --vocab-file "$VOCAB" --split "$SPLIT" \
    --lr 1e-3 --min-lr 1e-4 --lr-decay-style linear --lr-warmup-fraction .05 --weight-decay 1e-2 --clip-grad 1.0 \
    --log-interval 50 --eval-interval 100000 --eval-iters 5 \
    --save "$CKPT/ict_bert" --save-interval 100000

echo "== 3. ICT pretraining from the BERT ($ICT_ITERS iterations)"
# The seed command line of Megatron-LM's 2020 README (--batch-size, --ict-head-size,
# --checkpoint-activations, --warmup), scaled down, plus the 2021 shared-tower flag; --fp16 only
# where a GPU runs it.
PRECISION=""
if "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then PRECISION="--fp16"; fi
"$PYTHON" pretrain_ict.py $ICT_MODEL \
    --batch-size "$BATCH" --train-iters "$ICT_ITERS" --checkpoint-activations \
    --bert-load "$CKPT/ict_bert" --load "$CKPT/ict" --save "$CKPT/ict" \
    --data-path "$BODY" --titles-data-path "$TITLES" --vocab-file "$VOCAB" --split "$SPLIT" \
    --lr 1e-3 --num-workers 0 --lr-decay-style linear --weight-decay 1e-2 --clip-grad 1.0 --warmup .05 \
    --save-interval 100000 --query-in-block-prob 0.1 --log-interval 50 --eval-interval 100000 --eval-iters 5 \
    $PRECISION

echo "== 4. block embedding index of the whole corpus"
"$PYTHON" tools/create_doc_index.py $ICT_MODEL --batch-size "$BATCH" \
    --ict-load "$CKPT/ict" --data-path "$BODY" --titles-data-path "$TITLES" --vocab-file "$VOCAB" \
    --block-data-path "$DEMO_DIR/embedded_blocks.pkl" --indexer-batch-size 64 --indexer-log-interval 10

echo "== 5. held-out inverse-cloze retrieval"
"$PYTHON" tools/eval_ict_heldout.py $ICT_MODEL --micro-batch-size "$BATCH" \
    --data-path "$BODY" --titles-data-path "$TITLES" --vocab-file "$VOCAB" --split "$SPLIT" \
    --bert-load "$CKPT/ict_bert" --ict-load "$CKPT/ict" $BASELINES --topk 1 5 20 \
    --json-output "$DEMO_DIR/ict_heldout.json"
