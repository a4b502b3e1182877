#!/usr/bin/env bash
# ICT (Inverse Cloze Task) pretraining of a retriever: two BERT-base towers (~217M parameters),
# started from a pretrain_bert.py checkpoint, as in the ORQA/REALM recipe: sequence 256,
# 128-dimensional ICT heads, 100k iterations, batch 4096 (128 per GPU on 32 GPUs).
#
# Data: the body text split into sentences, and one title per document, e.g.
#   python tools/preprocess_data.py --input wiki.json --json-keys text title --split-sentences \
#       --tokenizer-type BertWordPieceLowerCase --vocab-file VOCAB --output-prefix data/wiki
# gives data/wiki_text_sentence and data/wiki_title_sentence.
#
# On a CPU, scaled down through the variables below (BERT_LOAD must have the same sizes):
#   NUM_LAYERS=2 HIDDEN_SIZE=32 NUM_HEADS=4 SEQ_LENGTH=64 MAX_POSITION_EMBEDDINGS=64 BATCH_SIZE=8 \
#   ICT_HEAD_SIZE=16 TRAIN_ITERS=20 SPLIT=90,8,2 BERT_LOAD=checkpoints/bert_tiny bash examples/pretrain_ict.sh
# GPUS_PER_NODE=N runs N data-parallel processes under torchrun (negatives gathered from all of them).
set -euo pipefail
# The interpreter to run (its torch and this package): PYTHON=/path/to/venv/bin/python to choose one.
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."

DATA_PATH=${DATA_PATH:-demo/bert_text_sentence}
TITLES_DATA_PATH=${TITLES_DATA_PATH:-demo/bert_title_sentence}
VOCAB_FILE=${VOCAB_FILE:-$("$PYTHON" -c "from megatron.tokenizer import bert_uncased_vocab_path; print(bert_uncased_vocab_path())")}
BERT_LOAD=${BERT_LOAD:-checkpoints/bert_base}
CHECKPOINT_PATH=${CHECKPOINT_PATH:-checkpoints/ict_base}
GPUS_PER_NODE=${GPUS_PER_NODE:-1}
# Mixed precision where it pays (a GPU); set PRECISION=--fp16 to force it, PRECISION= to drop it.
if "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    PRECISION=${PRECISION---fp16}
else
    PRECISION=${PRECISION-}
fi
if [ "$GPUS_PER_NODE" -gt 1 ]; then
    LAUNCH=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$GPUS_PER_NODE")
else
    LAUNCH=("$PYTHON")
fi

# --query-in-block-prob 0.1: the pseudo-query sentence stays in its block 10% of the time, so the
# retriever learns lexical matching without relying on it.
"${LAUNCH[@]}" pretrain_ict.py \
    --num-layers "${NUM_LAYERS:-12}" \
    --num-attention-heads "${NUM_HEADS:-12}" \
    --hidden-size "${HIDDEN_SIZE:-768}" \
    --batch-size "${BATCH_SIZE:-128}" \
    --seq-length "${SEQ_LENGTH:-256}" \
    --max-position-embeddings "${MAX_POSITION_EMBEDDINGS:-512}" \
    --ict-head-size "${ICT_HEAD_SIZE:-128}" \
    --train-iters "${TRAIN_ITERS:-100000}" \
    --checkpoint-activations \
    --bert-load "$BERT_LOAD" \
    --load "$CHECKPOINT_PATH" \
    --save "$CHECKPOINT_PATH" \
    --data-path "$DATA_PATH" \
    --titles-data-path "$TITLES_DATA_PATH" \
    --vocab-file "$VOCAB_FILE" \
    --lr 0.0001 \
    --num-workers "${NUM_WORKERS:-2}" \
    --lr-decay-style linear \
    --weight-decay 1e-2 \
    --clip-grad 1.0 \
    --warmup .01 \
    --save-interval "${SAVE_INTERVAL:-3000}" \
    --query-in-block-prob 0.1 \
    --split "${SPLIT:-969,30,1}" \
    --log-interval "${LOG_INTERVAL:-100}" \
    --eval-interval "${EVAL_INTERVAL:-1000}" \
    --eval-iters "${EVAL_ITERS:-10}" \
    --retriever-report-topk-accuracies 1 5 \
    $PRECISION ${EXTRA_ARGS:-}
