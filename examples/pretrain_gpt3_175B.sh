#!/usr/bin/env bash
# GPT-3 175B on 128 nodes x 8 GPUs (1,024 ranks) under Slurm: TP 8 x PP 16 x DP 8.
#   sbatch examples/pretrain_gpt3_175B.sh          # the real run (srun starts one torchrun per node)
#   DRY_RUN=1 bash examples/pretrain_gpt3_175B.sh  # check the layout and print the plan on any machine
# The sizes are environment variables, so a scaled-down copy runs on a CPU as well, e.g.
#   NNODES=1 GPUS_PER_NODE=2 TP=1 PP=2 NUM_LAYERS=2 HIDDEN_SIZE=64 NUM_HEADS=4 SEQ_LENGTH=64 \
#   MICRO_BATCH_SIZE=1 GLOBAL_BATCH_SIZE=8 RAMPUP_BATCH_SIZE= TRAIN_SAMPLES=160 LR_DECAY_SAMPLES=160 \
#   LR_WARMUP_SAMPLES=16 bash examples/pretrain_gpt3_175B.sh
#SBATCH --job-name=gpt3-175b
#SBATCH --nodes=128
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
set -euo pipefail
# The interpreter to run (its torch and this package): PYTHON=/path/to/venv/bin/python to choose one.
PYTHON=${PYTHON:-python3}
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"

DATA_PATH=${DATA_PATH:-demo/gpt_text_document}
VOCAB_FILE=${VOCAB_FILE:-demo/gpt2/vocab.json}
MERGE_FILE=${MERGE_FILE:-demo/gpt2/merges.txt}
CHECKPOINT_PATH=${CHECKPOINT_PATH:-checkpoints/gpt3_175b}
TENSORBOARD_DIR=${TENSORBOARD_DIR:-}
NNODES=${NNODES:-${SLURM_JOB_NUM_NODES:-128}}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
RAMPUP_BATCH_SIZE=${RAMPUP_BATCH_SIZE-16 16 5859375}

MODEL_ARGS=(
    --tensor-model-parallel-size "${TP:-8}"
    --pipeline-model-parallel-size "${PP:-16}"
    --num-layers "${NUM_LAYERS:-96}"
    --hidden-size "${HIDDEN_SIZE:-12288}"
    --num-attention-heads "${NUM_HEADS:-96}"
    --seq-length "${SEQ_LENGTH:-2048}"
    --max-position-embeddings "${SEQ_LENGTH:-2048}"
    --init-method-std 0.006
)
TRAINING_ARGS=(
    --micro-batch-size "${MICRO_BATCH_SIZE:-1}"
    --global-batch-size "${GLOBAL_BATCH_SIZE:-1536}"
    --train-samples "${TRAIN_SAMPLES:-146484375}"
    --lr-decay-samples "${LR_DECAY_SAMPLES:-126953125}"
    --lr-warmup-samples "${LR_WARMUP_SAMPLES:-183105}"
    --lr 6.0e-5
    --min-lr 6.0e-6
    --lr-decay-style cosine
    --clip-grad 1.0
    --weight-decay 0.1
    --adam-beta1 0.9
    --adam-beta2 0.95
    --checkpoint-activations
    --log-interval "${LOG_INTERVAL:-1}"
    --eval-interval "${EVAL_INTERVAL:-1000}"
    --eval-iters "${EVAL_ITERS:-40}"
    --split "${SPLIT:-98,2,0}"
)
if [ -n "$RAMPUP_BATCH_SIZE" ]; then
    # shellcheck disable=SC2206  # three numbers: start, increment, samples
    TRAINING_ARGS+=(--rampup-batch-size $RAMPUP_BATCH_SIZE)
fi
if "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    PRECISION=${PRECISION---fp16}
else
    PRECISION=${PRECISION-}
fi
# shellcheck disable=SC2206
TRAINING_ARGS+=($PRECISION)
if [ -n "$TENSORBOARD_DIR" ]; then
    TRAINING_ARGS+=(--tensorboard-dir "$TENSORBOARD_DIR")
fi

if [ -n "${DRY_RUN:-}" ]; then
    # No processes, no GPUs, no data: validate the 1,024-rank layout and print the plan.
    exec "$PYTHON" pretrain_gpt.py "${MODEL_ARGS[@]}" "${TRAINING_ARGS[@]}" \
        --dry-run --world-size $((NNODES * GPUS_PER_NODE)) --vocab-size "${VOCAB_SIZE:-50257}" ${EXTRA_ARGS:-}
fi

DATA_ARGS=(
    --data-path "$DATA_PATH"
    --vocab-file "$VOCAB_FILE"
    --merge-file "$MERGE_FILE"
    --data-impl mmap
    --save "$CHECKPOINT_PATH"
    --save-interval "${SAVE_INTERVAL:-1000}"
    --load "$CHECKPOINT_PATH"
)
MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" 2>/dev/null | head -n 1 || echo localhost)}
MASTER_PORT=${MASTER_PORT:-6000}
LAUNCH=("$PYTHON" -m torch.distributed.run --nproc_per_node "$GPUS_PER_NODE" --nnodes "$NNODES"
        --rdzv_id "${SLURM_JOB_ID:-gpt3}" --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT"
        pretrain_gpt.py "${MODEL_ARGS[@]}" "${TRAINING_ARGS[@]}" "${DATA_ARGS[@]}")
if [ -n "${SLURM_JOB_ID:-}" ]; then
    # One torchrun per node; torchrun starts the node's GPU processes and rendezvouses with the others.
    srun --ntasks-per-node=1 "${LAUNCH[@]}" ${EXTRA_ARGS:-}
else
    "${LAUNCH[@]}" ${EXTRA_ARGS:-}
fi
