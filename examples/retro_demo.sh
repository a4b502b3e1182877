#!/usr/bin/env bash
# RETRO end to end on the demo corpus, on the CPU:
#   1. examples/retro_data_demo.sh: corpus, BPE, retmmap retrieval DB, faiss index, KNN map of the DB onto
#      itself with same-document neighbours removed (so a training chunk's neighbours come from other
#      documents);
#   2. the same corpus as retmmap training data (chunk ids equal the DB's, so the KNN map indexes both);
#   3. pretrain_retro.py: a small RETRO, validation with and without retrieval;
#   4. tools/generate_samples_retro.py: greedy continuations with retrieval and without.
# Everything goes under $DEMO_DIR (default ./demo_retro_model); sizes are environment overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-demo_retro_model}
DOCS=${DOCS:-60}
MAX_CHARS=${MAX_CHARS:-1500}
CHUNK=${CHUNK:-32}
K=${K:-4}
NEIGHBORS=${NEIGHBORS:-2}
SEQ=${SEQ:-128}
ITERS=${ITERS:-150}
WARMUP=${WARMUP:-10}
EVAL_INTERVAL=${EVAL_INTERVAL:-50}
EVAL_ITERS=${EVAL_ITERS:-4}
LAYERS=${LAYERS:-4}
CCA_LAYERS=${CCA_LAYERS:-"1 3"}
HIDDEN=${HIDDEN:-64}
MBS=${MBS:-8}
GEN_TOKENS=${GEN_TOKENS:-32}
D=$DEMO_DIR
mkdir -p "$D"

if [ ! -f "$D/knn_final.save" ]; then
    echo "== 1. retrieval DB, faiss index and KNN map (examples/retro_data_demo.sh)"
    DEMO_DIR="$D" DOCS=$DOCS MAX_CHARS=$MAX_CHARS CHUNK=$CHUNK STRIDE=$CHUNK TRAIN_INDEX_SIZE=${TRAIN_INDEX_SIZE:-200} \
        FACTORY=${FACTORY:-Flat} SHARDS=${SHARDS:-1} K=$K MARGIN=${MARGIN:-8} BATCH=${BATCH:-64} WORKERS=${WORKERS:-2} \
        bash examples/retro_data_demo.sh
fi

echo "== 2. the corpus as retmmap training data"
python tools/preprocess_data.py --input="$D/corpus.json" --json-keys=text --tokenizer-library=megatron --apply-ftfy \
    --dataset-impl=retmmap --merge-file="$D/gpt2/merges.txt" --vocab-file="$D/gpt2/vocab.json" \
    --tokenizer-type=GPT2BPETokenizer --output-prefix="$D/retro_train" --need-pad-id --append-eod \
    --chunk_size=$CHUNK --chunk_stride_size=$CHUNK --workers=1

MODEL="--num-layers $LAYERS --hidden-size $HIDDEN --num-attention-heads 4 --seq-length $SEQ
    --max-position-embeddings $SEQ --position-embedding-type rope --retro-chunk-size $CHUNK
    --retro-num-neighbors $NEIGHBORS --retro-encoder-layers 1 --retro-decoder-cca-layers $CCA_LAYERS
    --vocab-file $D/gpt2/vocab.json --merge-file $D/gpt2/merges.txt --need-pad-id"

echo "== 3. pretrain RETRO ($ITERS iterations); validation with and without retrieval"
rm -rf "$D/checkpoints"
# shellcheck disable=SC2086
python pretrain_retro.py $MODEL \
    --micro-batch-size $MBS --global-batch-size $MBS --train-iters $ITERS --lr 2e-3 --min-lr 1e-4 \
    --lr-decay-style cosine --lr-warmup-iters $WARMUP --log-interval 10 --eval-interval $EVAL_INTERVAL \
    --eval-iters $EVAL_ITERS --split 90,10,0 --hidden-dropout 0 --attention-dropout 0 --num-workers 0 \
    --retro-train-data "$D/retro_train_text_document" --retro-db "$D/retro_db_text_document" \
    --retro-knn-map "$D/knn_final.save" --data-cache-path "$D/cache" \
    --save "$D/checkpoints" --save-interval $ITERS | tee "$D/pretrain.log" | grep -E "iteration +[0-9]+/|validation loss"

echo "== 4. greedy continuations with retrieval and without"
printf 'Return the number of\nThe os module provides\n' > "$D/prompts.txt"
for mode in with without; do
    extra=""
    if [ $mode = without ]; then extra="--retro-no-retrieval"; fi
    # shellcheck disable=SC2086
    python tools/generate_samples_retro.py $MODEL --micro-batch-size 1 --load "$D/checkpoints" \
        --retro-db "$D/retro_db_text_document" --retro-index "$D/final.index" --out-seq-length $GEN_TOKENS \
        --greedy --sample-input-file "$D/prompts.txt" --genfile "$D/samples_${mode}_retrieval.jsonl" $extra \
        > "$D/generate_${mode}.log"
    echo "-- $mode retrieval:"
    cat "$D/samples_${mode}_retrieval.jsonl"
done
echo "== done"
