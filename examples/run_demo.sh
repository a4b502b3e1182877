#!/usr/bin/env bash
# The demo, end to end on the CPU with bundled data only (no network):
#   1. write the demo corpus (Python's own documentation as loose JSON),
#   2. train a GPT-2-style BPE vocabulary on it (no GPT-2 vocabulary can be downloaded),
#   3. preprocess it for GPT (BPE, one sequence per document, end-of-document tokens)
#      and for BERT (the real BERT uncased vocabulary, split into sentences),
#   4. pretrain a tiny GPT on the CPU: the first DEMO_ITERS (default 300) of a 600-iteration run,
#      printing the validation loss and perplexity every 100, and save a checkpoint under
#      $DEMO_DIR/checkpoints/gpt (--exit-interval ends the run there).
# Everything goes under $DEMO_DIR (default ./demo). examples/resume_demo.sh runs step 4 again from
# the checkpoint to the end of the 600 iterations (RESUME=1 skips steps 1-3); DEMO_ITERS=0 stops
# after the data.
set -euo pipefail
# The interpreter to run (its torch and this package): PYTHON=/path/to/venv/bin/python to choose one.
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-demo}
WORKERS=${WORKERS:-2}
DEMO_ITERS=${DEMO_ITERS:-300}
TRAIN_ITERS=${TRAIN_ITERS:-600}
CHECKPOINT_DIR="$DEMO_DIR/checkpoints/gpt"
mkdir -p "$DEMO_DIR"

if [ -z "${RESUME:-}" ]; then
    "$PYTHON" tools/make_demo_corpus.py --output "$DEMO_DIR/corpus.json"

    "$PYTHON" tools/train_tokenizer.py --input "$DEMO_DIR/corpus.json" --json-keys text \
        --tokenizer-type GPT2BPETokenizer --vocab-size 8192 --output-dir "$DEMO_DIR/gpt2"

    BERT_VOCAB=$("$PYTHON" -c "from megatron.tokenizer import bert_uncased_vocab_path; print(bert_uncased_vocab_path())")

    "$PYTHON" tools/preprocess_data.py --input "$DEMO_DIR/corpus.json" --output-prefix "$DEMO_DIR/gpt" \
        --vocab "$DEMO_DIR/gpt2/vocab.json" --merge-file "$DEMO_DIR/gpt2/merges.txt" \
        --dataset-impl mmap --tokenizer-type GPT2BPETokenizer --append-eod --workers "$WORKERS"

    "$PYTHON" tools/preprocess_data.py --input "$DEMO_DIR/corpus.json" --json-keys text title \
        --split-sentences --tokenizer-type BertWordPieceLowerCase --vocab-file "$BERT_VOCAB" \
        --output-prefix "$DEMO_DIR/bert" --workers "$WORKERS"

    echo "Demo data ready in $DEMO_DIR: gpt_text_document, bert_text_sentence, bert_title_sentence (.bin/.idx)"
elif [ ! -f "$CHECKPOINT_DIR/latest_checkpointed_iteration.txt" ]; then
    echo "RESUME=1: no checkpoint in $CHECKPOINT_DIR; run examples/run_demo.sh first" >&2
    exit 1
fi

if [ "$DEMO_ITERS" -eq 0 ]; then
    exit 0
fi
if [ -z "${RESUME:-}" ]; then
    STOP_ARGS="--exit-interval $DEMO_ITERS"
else
    STOP_ARGS=""
fi

# A tiny GPT (2 layers, hidden 64, 4 heads, 64-token sequences) trained on the CPU with gloo.
# --load is given on the first run too: with no checkpoint there yet, training starts from scratch.
"$PYTHON" pretrain_gpt.py \
    --num-layers 2 --hidden-size 64 --num-attention-heads 4 \
    --seq-length 64 --max-position-embeddings 64 \
    --micro-batch-size 16 --global-batch-size 16 \
    --train-iters "$TRAIN_ITERS" $STOP_ARGS \
    --lr 2e-3 --min-lr 2e-4 --lr-decay-style cosine --lr-warmup-iters 30 \
    --weight-decay 0.01 --clip-grad 1.0 \
    --data-path "$DEMO_DIR/gpt_text_document" \
    --vocab-file "$DEMO_DIR/gpt2/vocab.json" --merge-file "$DEMO_DIR/gpt2/merges.txt" \
    --split 95,4,1 --num-workers 0 \
    --log-interval "${LOG_INTERVAL:-50}" --eval-interval 100 --eval-iters 10 \
    --save "$CHECKPOINT_DIR" --load "$CHECKPOINT_DIR" --save-interval 100 \
    --distributed-backend gloo ${EXTRA_ARGS:-}

echo "Demo checkpoint in $CHECKPOINT_DIR (iteration $(cat "$CHECKPOINT_DIR/latest_checkpointed_iteration.txt"))"
