#!/usr/bin/env bash
# T5-base-like model on one GPU (or, scaled down through the variables below, on a CPU):
#   NUM_LAYERS=2 HIDDEN_SIZE=64 NUM_HEADS=4 SEQ_LENGTH=64 DECODER_SEQ_LENGTH=32 TRAIN_ITERS=20 bash examples/pretrain_t5.sh
set -euo pipefail
# The interpreter to run (its torch and this package): PYTHON=/path/to/venv/bin/python to choose one.
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."

DATA_PATH=${DATA_PATH:-demo/bert_text_sentence}
VOCAB_FILE=${VOCAB_FILE:-$("$PYTHON" -c "from megatron.tokenizer import bert_uncased_vocab_path; print(bert_uncased_vocab_path())")}
CHECKPOINT_PATH=${CHECKPOINT_PATH:-checkpoints/t5_base}
if "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    PRECISION=${PRECISION---fp16}
else
    PRECISION=${PRECISION-}
fi

"$PYTHON" pretrain_t5.py \
    --num-layers "${NUM_LAYERS:-12}" \
    --hidden-size "${HIDDEN_SIZE:-768}" \
    --num-attention-heads "${NUM_HEADS:-12}" \
    --kv-channels "${KV_CHANNELS:-64}" \
    --ffn-hidden-size "${FFN_HIDDEN_SIZE:-3072}" \
    --encoder-seq-length "${SEQ_LENGTH:-512}" \
    --decoder-seq-length "${DECODER_SEQ_LENGTH:-128}" \
    --max-position-embeddings "${SEQ_LENGTH:-512}" \
    --micro-batch-size "${MICRO_BATCH_SIZE:-16}" \
    --global-batch-size "${GLOBAL_BATCH_SIZE:-2048}" \
    --train-iters "${TRAIN_ITERS:-1000000}" \
    --lr-decay-iters "${LR_DECAY_ITERS:-1000000}" \
    --save "$CHECKPOINT_PATH" \
    --load "$CHECKPOINT_PATH" \
    --data-path "$DATA_PATH" \
    --vocab-file "$VOCAB_FILE" \
    --vocab-extra-ids 100 \
    --data-impl mmap \
    --split "${SPLIT:-949,50,1}" \
    --lr 0.0001 \
    --min-lr 0.00001 \
    --lr-decay-style linear \
    --lr-warmup-fraction .01 \
    --weight-decay 1e-2 \
    --clip-grad 1.0 \
    --log-interval "${LOG_INTERVAL:-100}" \
    --save-interval "${SAVE_INTERVAL:-10000}" \
    --eval-interval "${EVAL_INTERVAL:-1000}" \
    --eval-iters "${EVAL_ITERS:-10}" \
    $PRECISION ${EXTRA_ARGS:-}
