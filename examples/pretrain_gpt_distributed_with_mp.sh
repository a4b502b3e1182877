#!/usr/bin/env bash
# GPT-2 345M with tensor (TP, default 2) and pipeline (PP, default 2) model parallelism, the rest data parallel.
# Sizes are environment variables, as in the single-process script, e.g. on a CPU:
#   GPUS_PER_NODE=2 NUM_LAYERS=2 HIDDEN_SIZE=64 NUM_HEADS=4 SEQ_LENGTH=64 TRAIN_ITERS=20 bash examples/pretrain_gpt_distributed_with_mp.sh
set -euo pipefail
# The interpreter to run (its torch and this package): PYTHON=/path/to/venv/bin/python to choose one.
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."

DATA_PATH=${DATA_PATH:-demo/gpt_text_document}
VOCAB_FILE=${VOCAB_FILE:-demo/gpt2/vocab.json}
MERGE_FILE=${MERGE_FILE:-demo/gpt2/merges.txt}
CHECKPOINT_PATH=${CHECKPOINT_PATH:-checkpoints/gpt2_345m}
if "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    PRECISION=${PRECISION---fp16}
else
    PRECISION=${PRECISION-}
fi

# One node by default; for several, set NNODES, NODE_RANK and MASTER_ADDR on each (or use Slurm).
# Without GPUs, GPUS_PER_NODE processes run on the CPU with gloo.
GPUS_PER_NODE=${GPUS_PER_NODE:-$("$PYTHON" -c "import torch; print(torch.cuda.device_count() or 2)")}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
DISTRIBUTED_ARGS="--nproc_per_node $GPUS_PER_NODE --nnodes $NNODES --node_rank $NODE_RANK --master_addr $MASTER_ADDR --master_port $MASTER_PORT"

"$PYTHON" -m torch.distributed.run $DISTRIBUTED_ARGS \
    pretrain_gpt.py \
    --tensor-model-parallel-size "${TP:-2}" \
    --pipeline-model-parallel-size "${PP:-2}" \
    --num-layers "${NUM_LAYERS:-24}" \
    --hidden-size "${HIDDEN_SIZE:-1024}" \
    --num-attention-heads "${NUM_HEADS:-16}" \
    --micro-batch-size "${MICRO_BATCH_SIZE:-4}" \
    --global-batch-size "${GLOBAL_BATCH_SIZE:-16}" \
    --seq-length "${SEQ_LENGTH:-1024}" \
    --max-position-embeddings "${SEQ_LENGTH:-1024}" \
    --train-iters "${TRAIN_ITERS:-500000}" \
    --lr-decay-iters "${LR_DECAY_ITERS:-320000}" \
    --save "$CHECKPOINT_PATH" \
    --load "$CHECKPOINT_PATH" \
    --data-path "$DATA_PATH" \
    --vocab-file "$VOCAB_FILE" \
    --merge-file "$MERGE_FILE" \
    --data-impl mmap \
    --split "${SPLIT:-949,50,1}" \
    --lr 0.00015 \
    --min-lr 1.0e-5 \
    --lr-decay-style cosine \
    --weight-decay 1e-2 \
    --clip-grad 1.0 \
    --lr-warmup-fraction .01 \
    --checkpoint-activations \
    --log-interval "${LOG_INTERVAL:-100}" \
    --save-interval "${SAVE_INTERVAL:-10000}" \
    --eval-interval "${EVAL_INTERVAL:-1000}" \
    --eval-iters "${EVAL_ITERS:-10}" \
    $PRECISION ${EXTRA_ARGS:-}
