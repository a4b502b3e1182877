#!/usr/bin/env bash
# The MLPerf BERT data recipe end to end on the CPU, on the bundled demo corpus:
#   1. the demo corpus (Python's documentation, tools/make_demo_corpus.py) -> MLPerf's text format:
#      one sentence per line, blank lines between documents, part-0000K-of-0000N + eval.txt;
#   2. a WordPiece vocab.txt trained on it (a small vocabulary keeps the masked-LM head cheap on a CPU);
#   3. tools/create_pretraining_data.py with MLPerf's flags (seed 12345, dupe factor, masking), one run
#      per part (--output_dir, --workers), and once over eval.txt;
#   4. tools/pick_eval_samples.py (the eval_10k pick, scaled down) and tools/make_idx.py (DALI indexes);
#   5. pretrain_bert.py --data-impl tfrecord: masked-LM accuracy (MLPerf's metric) and NSP accuracy on
#      the held-out pick, rising as training goes on.
# Everything goes under $DEMO_DIR (default ./demo/mlperf_bert); sizes are environment overrides (the
# CI test runs it with a few iterations).
set -euo pipefail
cd "$(dirname "$0")/.."
# The interpreter to run (its torch and this package): PYTHON=/path/to/venv/bin/python to choose one.
PYTHON=${PYTHON:-python3}
DEMO_DIR=${DEMO_DIR:-demo/mlperf_bert}
WORKERS=${WORKERS:-2}
PARTS=${PARTS:-4}
EVAL_DOCS=${EVAL_DOCS:-30}
VOCAB_SIZE=${VOCAB_SIZE:-512}
SEQ=${SEQ:-32}
PREDS=${PREDS:-5}
DUPE=${DUPE:-5}
EVAL_PICK=${EVAL_PICK:-256}
ITERS=${ITERS:-2500}
EVAL_INTERVAL=${EVAL_INTERVAL:-250}
EVAL_ITERS=${EVAL_ITERS:-4}  # 4 x 64 = the whole eval pick per evaluation
BATCH=${BATCH:-64}
HIDDEN=${HIDDEN:-128}
LAYERS=${LAYERS:-2}
HEADS=${HEADS:-4}
LR=${LR:-1e-3}
CORPUS_ARGS=${CORPUS_ARGS:-}
mkdir -p "$DEMO_DIR"

echo "== 1. demo corpus -> MLPerf text ($PARTS parts + eval.txt)"
if [ ! -f "$DEMO_DIR/corpus.json" ]; then
    "$PYTHON" tools/make_demo_corpus.py --output "$DEMO_DIR/corpus.json" $CORPUS_ARGS
fi
"$PYTHON" -m megatron.preprocessing.mlperf_bert.text --input "$DEMO_DIR/corpus.json" --output-dir "$DEMO_DIR/text" \
    --num-parts "$PARTS" --eval-documents "$EVAL_DOCS"

echo "== 2. WordPiece vocabulary ($VOCAB_SIZE tokens)"
"$PYTHON" tools/train_tokenizer.py --input "$DEMO_DIR/corpus.json" --tokenizer-type BertWordPieceLowerCase \
    --vocab-size "$VOCAB_SIZE" --output-dir "$DEMO_DIR/vocab"
VOCAB="$DEMO_DIR/vocab/vocab.txt"

echo "== 3. TFRecords (MLPerf flags, seed 12345)"
rm -rf "$DEMO_DIR/tfrecord" "$DEMO_DIR/eval" "$DEMO_DIR/idx"
"$PYTHON" tools/create_pretraining_data.py --input_file="$DEMO_DIR/text/part-*" --output_dir="$DEMO_DIR/tfrecord" \
    --workers="$WORKERS" --vocab_file="$VOCAB" --do_lower_case=True --max_seq_length="$SEQ" \
    --max_predictions_per_seq="$PREDS" --masked_lm_prob=0.15 --random_seed=12345 --dupe_factor="$DUPE"
"$PYTHON" tools/create_pretraining_data.py --input_file="$DEMO_DIR/text/eval.txt" \
    --output_file="$DEMO_DIR/eval_intermediate" --vocab_file="$VOCAB" --do_lower_case=True \
    --max_seq_length="$SEQ" --max_predictions_per_seq="$PREDS" --masked_lm_prob=0.15 --random_seed=12345 \
    --dupe_factor=10

echo "== 4. eval pick and index files"
"$PYTHON" tools/pick_eval_samples.py --input_tfrecord="$DEMO_DIR/eval_intermediate" \
    --output_tfrecord="$DEMO_DIR/eval/eval_10k" --num_examples_to_pick="$EVAL_PICK" \
    --max_seq_length="$SEQ" --max_predictions_per_seq="$PREDS"
"$PYTHON" tools/make_idx.py --tfrecord_train="$DEMO_DIR/tfrecord" --tfrecord_eval="$DEMO_DIR/eval" \
    --output_idx="$DEMO_DIR/idx"

echo "== 5. BERT pretraining from the TFRecords ($ITERS iterations)"
"$PYTHON" pretrain_bert.py --num-layers "$LAYERS" --hidden-size "$HIDDEN" --num-attention-heads "$HEADS" \
    --seq-length "$SEQ" --max-position-embeddings "$SEQ" \
    --micro-batch-size "$BATCH" --global-batch-size "$BATCH" --train-iters "$ITERS" \
    --data-impl tfrecord --data-path "$DEMO_DIR/tfrecord/part-*" --tfrecord-index-dir "$DEMO_DIR/idx" \
    --valid-data-path "$DEMO_DIR/eval/eval_10k" --vocab-file "$VOCAB" \
    --lr "$LR" --min-lr 1e-4 --lr-decay-style linear --lr-warmup-fraction 0.02 --weight-decay 0.01 \
    --clip-grad 1.0 --log-interval "$EVAL_INTERVAL" --eval-interval "$EVAL_INTERVAL" --eval-iters "$EVAL_ITERS"
