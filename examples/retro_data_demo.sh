#!/usr/bin/env bash
# NeMo's RETRO data recipe on the demo corpus, end to end on the CPU: its four command lines as NeMo
# writes them (only the script paths changed to ours, sizes scaled, the sentence-transformers model an
# installed copy), then the KNN map.
#   0. the demo corpus (Python's documentation) and a GPT-2-style BPE trained on it;
#   1. preprocess it into a retmmap retrieval database (--dataset-impl=retmmap --retrieval-db);
#   2. stage 0: train the faiss index on a sample of chunk embeddings;
#   3. stage 1: add the chunks in $SHARDS shards (one job each; run them on different machines at scale);
#   4. stage 2: merge the shards into the final index (IVF: on-disk inverted lists);
#   5. the KNN map of the database onto itself (--remove_duplicate: no neighbour from the own document),
#      in $SHARDS shards, then merged.
# Everything goes under $DEMO_DIR (default ./demo_retro); sizes are environment overrides (the CI test
# runs it with a few dozen chunks and an exact index).
set -euo pipefail
# The interpreter to run (its torch and this package): PYTHON=/path/to/venv/bin/python to choose one.
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-demo_retro}
DOCS=${DOCS:-0}                     # keep only the first DOCS documents (0: all)
MAX_CHARS=${MAX_CHARS:-0}           # cut each document to MAX_CHARS characters (0: whole)
CHUNK=${CHUNK:-64}
STRIDE=${STRIDE:-64}
WORKERS=${WORKERS:-2}
TRAIN_INDEX_SIZE=${TRAIN_INDEX_SIZE:-5000}
FACTORY=${FACTORY:-IVF64,Flat}      # "" for NeMo's default IVF(4 sqrt(chunks)),PQ8
SHARDS=${SHARDS:-2}
K=${K:-4}
MARGIN=${MARGIN:-8}
NPROBE=${NPROBE:-16}
MODEL=${MODEL:-all-MiniLM-L6-v2}
BATCH=${BATCH:-128}
mkdir -p "$DEMO_DIR"
D=$DEMO_DIR

if [ ! -f "$D/gpt2/merges.txt" ]; then
    echo "== 0. demo corpus and GPT-2 BPE"
    "$PYTHON" tools/make_demo_corpus.py --output "$D/corpus_full.json"
    "$PYTHON" tools/train_tokenizer.py --input "$D/corpus_full.json" --json-keys text \
        --tokenizer-type GPT2BPETokenizer --vocab-size 8000 --output-dir "$D/gpt2"
fi
"$PYTHON" - "$D/corpus_full.json" "$D/corpus.json" "$DOCS" "$MAX_CHARS" <<'EOF'
import json, sys
src, dst, docs, max_chars = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as g:
    for i, line in enumerate(f):
        if docs and i >= docs:
            break
        doc = json.loads(line)
        if max_chars:
            doc["text"] = doc["text"][:max_chars]
        g.write(json.dumps(doc) + "\n")
EOF
TOK="--tokenizer-library=megatron --tokenizer-type=GPT2BPETokenizer --merge-file=$D/gpt2/merges.txt --vocab-file=$D/gpt2/vocab.json"
FACTORY_FLAG=""
if [ -n "$FACTORY" ]; then FACTORY_FLAG="--faiss_factory=$FACTORY"; fi
rm -f "$D"/shard*.index "$D"/knn_shard* "$D"/final.index* "$D"/knn_final.save

echo "== 1. preprocess into a retmmap retrieval database"
"$PYTHON" tools/preprocess_data.py \
    --input="$D/corpus.json" \
    --json-keys=text \
    --tokenizer-library=megatron \
    --apply-ftfy \
    --dataset-impl=retmmap \
    --merge-file="$D/gpt2/merges.txt" \
    --vocab-file="$D/gpt2/vocab.json" \
    --tokenizer-type=GPT2BPETokenizer \
    --output-prefix="$D/retro_db" \
    --need-pad-id \
    --append-eod \
    --retrieval-db \
    --chunk_size=$CHUNK \
    --chunk_stride_size=$STRIDE \
    --workers=$WORKERS

echo "== 2. stage 0: train the index"
"$PYTHON" tools/retro/build_retrieval_index.py \
    --input_file="$D/retro_db_text_document" \
    $TOK \
    --percent=1.0 \
    --sentence_transformer_model=$MODEL \
    --batch_size=$BATCH \
    --train_index_size=$TRAIN_INDEX_SIZE \
    --workers=$WORKERS \
    --devices=0 \
    --stage=0 \
    $FACTORY_FLAG \
    --output_file="$D/pretrained_tree.index"

echo "== 3. stage 1: add the chunks, $SHARDS shards"
for ((shard = 0; shard < SHARDS; shard++)); do
    "$PYTHON" tools/retro/build_retrieval_index.py \
        --input_file="$D/retro_db_text_document" \
        $TOK \
        --percent=1.0 \
        --sentence_transformer_model=$MODEL \
        --batch_size=$BATCH \
        --shard_id=$shard \
        --total_shards=$SHARDS \
        --workers=$WORKERS \
        --devices=0 \
        --stage=1 \
        --learned_index="$D/pretrained_tree.index" \
        --output_file="$D/shard${shard}.index"
done

echo "== 4. stage 2: merge the shards"
"$PYTHON" tools/retro/build_retrieval_index.py \
    --stage=2 \
    --devices=0 \
    --learned_index="$D/pretrained_tree.index" \
    --shard_index_input="$D/shard" \
    --output_file="$D/final.index"

echo "== 5. KNN map of the database onto itself, $SHARDS shards, then merged"
for ((shard = 0; shard < SHARDS; shard++)); do
    "$PYTHON" tools/retro/build_knn_map_index.py \
        --input_file="$D/retro_db_text_document" \
        --faiss_index="$D/final.index" \
        $TOK \
        --process_chunk_size=1000 \
        --remove_duplicate \
        --K_neighbors=$K \
        --dedup_margin=$MARGIN \
        --nprobe=$NPROBE \
        --sentence_transformer_model=$MODEL \
        --batch_size=$BATCH \
        --workers=$WORKERS \
        --devices=0 \
        --stage=1 \
        --shard_id=$shard \
        --total_shards=$SHARDS \
        --output_file="$D/knn_shard${shard}.save"
done
"$PYTHON" tools/retro/build_knn_map_index.py \
    --stage=2 \
    --shard_index_input="$D/knn_shard" \
    --output_file="$D/knn_final.save"

"$PYTHON" - "$D/retro_db_text_document" "$D/knn_final.save" <<'EOF'
import sys
from megatron.core.datasets.knn_map import KNNMap
from megatron.core.datasets.retro_indexed_dataset import RetrievalIndexedDataset
db, knn = RetrievalIndexedDataset(sys.argv[1]), KNNMap(sys.argv[2])
print(f"== done: {len(db)} documents, {db.chunks} chunks of {db.chunk_size} tokens; KNN map K={knn.K} over "
      f"chunks [{knn.chunk_start_id}, {knn.chunk_end_id}); first row {knn.get_KNN_chunk_ids(0).tolist()}")
EOF
