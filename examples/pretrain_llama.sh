#!/usr/bin/env bash
# A Llama-style GPT (Llama 3 8B shape by default): rotary embeddings, SwiGLU, RMSNorm, grouped-query
# attention, no biases, untied output layer, with tensor (TP, default 2) and pipeline (PP, default 2)
# model parallelism and the rest data parallel.
# Sizes are environment variables, as in the other examples, e.g. on a CPU:
#   GPUS_PER_NODE=2 TP=1 PP=2 NUM_LAYERS=2 HIDDEN_SIZE=64 NUM_HEADS=4 NUM_QUERY_GROUPS=2 FFN_HIDDEN_SIZE=128 \
#     SEQ_LENGTH=64 TRAIN_ITERS=20 bash examples/pretrain_llama.sh
# The tokenizer defaults to a Hugging Face tokenizer.json (TOKENIZER_MODEL); any tokenizer works through
# TOKENIZER_ARGS, e.g. TOKENIZER_ARGS="--tokenizer-type GPT2BPETokenizer --vocab-file V --merge-file M".
# A Hugging Face Llama checkpoint converts to this layout (and back) with
#   python3 tools/convert_hf_checkpoint.py --direction from-hf --model-type llama --load HF_DIR --save CKPT \
#       --target-tensor-parallel-size 2 --target-pipeline-parallel-size 2
# and continues training with LOAD_ARGS="--finetune" or "--no-load-optim --no-load-rng".
set -euo pipefail
cd "$(dirname "$0")/.."
# The interpreter to run (its torch and this package): PYTHON=/path/to/venv/bin/python to choose one.
PYTHON=${PYTHON:-python3}

DATA_PATH=${DATA_PATH:-demo/llama_text_document}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-checkpoints/llama3_8b_hf/tokenizer.json}
TOKENIZER_ARGS=${TOKENIZER_ARGS:---tokenizer-type HuggingFaceTokenizer --tokenizer-model $TOKENIZER_MODEL}
CHECKPOINT_PATH=${CHECKPOINT_PATH:-checkpoints/llama3_8b}
if "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    PRECISION=${PRECISION---bf16}
else
    PRECISION=${PRECISION-}
fi

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
    --sequence-parallel \
    --use-distributed-optimizer \
    --num-layers "${NUM_LAYERS:-32}" \
    --hidden-size "${HIDDEN_SIZE:-4096}" \
    --ffn-hidden-size "${FFN_HIDDEN_SIZE:-14336}" \
    --num-attention-heads "${NUM_HEADS:-32}" \
    --group-query-attention \
    --num-query-groups "${NUM_QUERY_GROUPS:-8}" \
    --position-embedding-type rope \
    --rotary-base "${ROTARY_BASE:-500000}" \
    --no-position-embedding \
    --swiglu \
    --normalization RMSNorm \
    --norm-epsilon 1e-5 \
    --disable-bias-linear \
    --untie-embeddings-and-output-weights \
    --attention-dropout 0.0 \
    --hidden-dropout 0.0 \
    --micro-batch-size "${MICRO_BATCH_SIZE:-1}" \
    --global-batch-size "${GLOBAL_BATCH_SIZE:-128}" \
    --seq-length "${SEQ_LENGTH:-8192}" \
    --max-position-embeddings "${SEQ_LENGTH:-8192}" \
    --train-iters "${TRAIN_ITERS:-500000}" \
    --lr-decay-iters "${LR_DECAY_ITERS:-480000}" \
    --save "$CHECKPOINT_PATH" \
    --load "$CHECKPOINT_PATH" \
    --data-path "$DATA_PATH" \
    $TOKENIZER_ARGS \
    --data-impl mmap \
    --split "${SPLIT:-949,50,1}" \
    --lr 3.0e-4 \
    --min-lr 3.0e-5 \
    --lr-decay-style cosine \
    --weight-decay 0.1 \
    --adam-beta1 0.9 \
    --adam-beta2 0.95 \
    --clip-grad 1.0 \
    --init-method-std 0.02 \
    --lr-warmup-fraction .01 \
    --recompute-activations \
    --log-interval "${LOG_INTERVAL:-100}" \
    --save-interval "${SAVE_INTERVAL:-10000}" \
    --eval-interval "${EVAL_INTERVAL:-1000}" \
    --eval-iters "${EVAL_ITERS:-10}" \
    ${LOAD_ARGS:-} $PRECISION ${EXTRA_ARGS:-}
