#!/usr/bin/env bash
# Unconditional samples from a GPT checkpoint (Megatron-LM's examples/generate_text.sh).
# The model flags must be those the checkpoint was trained with: the defaults are GPT-2 345M, as in
# examples/pretrain_gpt.sh, and the same variables scale both scripts. On the demo checkpoint:
#   NUM_LAYERS=2 HIDDEN_SIZE=64 NUM_HEADS=4 SEQ_LENGTH=64 CHECKPOINT_PATH=demo/checkpoints/gpt \
#   MAX_OUTPUT_SEQUENCE_LENGTH=32 bash examples/generate_text.sh
# Continuations stop at SEQ_LENGTH (the model's positions) tokens; the tool says so when that is
# less than MAX_OUTPUT_SEQUENCE_LENGTH. SAMPLE_INPUT_FILE=prompts.txt continues each line instead.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKPOINT_PATH=${CHECKPOINT_PATH:-checkpoints/gpt2_345m}
VOCAB_FILE=${VOCAB_FILE:-demo/gpt2/vocab.json}
MERGE_FILE=${MERGE_FILE:-demo/gpt2/merges.txt}
MAX_OUTPUT_SEQUENCE_LENGTH=${MAX_OUTPUT_SEQUENCE_LENGTH:-1024}
TEMPERATURE=${TEMPERATURE:-1.0}
TOP_P=${TOP_P:-0.9}
NUMBER_OF_SAMPLES=${NUMBER_OF_SAMPLES:-2}
OUTPUT_FILE=${OUTPUT_FILE:-unconditional_samples.json}
PYTHON=${PYTHON:-python3}
# Megatron-LM's example generates in fp16 on a GPU; on a CPU fp32 (PRECISION= to choose).
if "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    PRECISION=${PRECISION---fp16}
else
    PRECISION=${PRECISION-}
fi
if [ -n "${SAMPLE_INPUT_FILE:-}" ]; then
    SAMPLES=(--sample-input-file "$SAMPLE_INPUT_FILE")
else
    SAMPLES=(--num-samples "$NUMBER_OF_SAMPLES")
fi

"$PYTHON" tools/generate_samples_gpt.py \
    --tensor-model-parallel-size 1 \
    --num-layers "${NUM_LAYERS:-24}" \
    --hidden-size "${HIDDEN_SIZE:-1024}" \
    --num-attention-heads "${NUM_HEADS:-16}" \
    --seq-length "${SEQ_LENGTH:-1024}" \
    --max-position-embeddings "${SEQ_LENGTH:-1024}" \
    --load "$CHECKPOINT_PATH" \
    --tokenizer-type GPT2BPETokenizer \
    --vocab-file "$VOCAB_FILE" \
    --merge-file "$MERGE_FILE" \
    --micro-batch-size "${MICRO_BATCH_SIZE:-2}" \
    --out-seq-length "$MAX_OUTPUT_SEQUENCE_LENGTH" \
    --temperature "$TEMPERATURE" \
    --top_p "$TOP_P" \
    --genfile "$OUTPUT_FILE" \
    "${SAMPLES[@]}" $PRECISION ${EXTRA_ARGS:-}
