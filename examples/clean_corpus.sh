#!/usr/bin/env bash
# The web-text cleaning chain (Megatron-LM's "Collecting GPT Webtext Data") on the bundled demo
# text, made noisy on purpose, then preprocess_data.py on the result. No network is needed.
#   1. write a noisy corpus in two shards (near/exact duplicates, mojibake, foreign-language and
#      one-sentence documents, LAMBADA text pasted in) and URL lists with junk URLs,
#   2. blacklist_urls.py on the URL lists,
#   3. merge_jsons.py: the shards into one file, in order,
#   4. exact_dedup.py: exact duplicates up to case, punctuation and spacing,
#   5. cleanup_dataset.py: ftfy, English only, at least MIN_TOKENS GPT-2 tokens,
#   6. find_duplicates.py -> group_duplicate_url.py -> remove_group_duplicates.py: near-duplicates,
#   7. filter_ngrams.py: 13-grams of LAMBADA, RACE and MNLI (the bundled task samples) cut out,
#      except those in >= 10 documents (--key-threshold, as Megatron-LM: common text, kept),
#   8. train a GPT-2-style BPE on the result, then preprocess_data.py: .bin/.idx with end-of-document tokens.
# Everything goes under $OUT_DIR (default ./webtext_demo). NUM_DOCS (default 2000) sizes the corpus.
set -euo pipefail
# The interpreter to run (its torch and this package): PYTHON=/path/to/venv/bin/python to choose one.
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
OUT_DIR=${OUT_DIR:-webtext_demo}
NUM_DOCS=${NUM_DOCS:-2000}
WORKERS=${WORKERS:-2}
MIN_TOKENS=${MIN_TOKENS:-128}
JACCARD=${JACCARD:-0.5}
T=tools/openwebtext
DATA=tests/data
mkdir -p "$OUT_DIR"

"$PYTHON" $T/make_noisy_corpus.py --output-dir "$OUT_DIR/raw" --num-docs "$NUM_DOCS" \
    --task-file $DATA/lambada_sample.jsonl
rm -rf "$OUT_DIR/shards" && mkdir -p "$OUT_DIR/shards"
split -d -n l/2 --additional-suffix=.json "$OUT_DIR/raw/corpus.json" "$OUT_DIR/shards/part_"

"$PYTHON" $T/blacklist_urls.py "$OUT_DIR/raw/urls" "$OUT_DIR/clean_urls.txt"

"$PYTHON" $T/merge_jsons.py --json_path "$OUT_DIR/shards" --output_file "$OUT_DIR/merged.json"

"$PYTHON" $T/exact_dedup.py "$OUT_DIR/merged.json" "$OUT_DIR/exact.json" --workers "$WORKERS"

"$PYTHON" $T/cleanup_dataset.py "$OUT_DIR/exact.json" "$OUT_DIR/clean.json" --min-tokens "$MIN_TOKENS" \
    --workers "$WORKERS"

"$PYTHON" $T/find_duplicates.py --inputs "$OUT_DIR/clean.json" url --output "$OUT_DIR/pairs.json" \
    --jaccard-threshold "$JACCARD" --num-workers "$WORKERS"
"$PYTHON" $T/group_duplicate_url.py "$OUT_DIR/pairs.json" "$OUT_DIR/groups.json" "$JACCARD"
"$PYTHON" $T/remove_group_duplicates.py "$OUT_DIR/groups.json" "$OUT_DIR/clean.json" "$OUT_DIR/dedup.json"

"$PYTHON" $T/filter_ngrams.py --tasks lambada race mnli --lambada-path $DATA/lambada_sample.jsonl \
    --race-path $DATA/race/dev --mnli-path $DATA/glue/MNLI/dev_matched.tsv \
    --dedup-dataset "$OUT_DIR/dedup.json" text --output "$OUT_DIR/final.json" --num-threads "$WORKERS"

# No GPT-2 vocabulary can be downloaded: train a GPT-2-style BPE on the clean corpus, as run_demo.sh does.
"$PYTHON" tools/train_tokenizer.py --input "$OUT_DIR/final.json" --json-keys text \
    --tokenizer-type GPT2BPETokenizer --vocab-size "${VOCAB_SIZE:-4096}" --output-dir "$OUT_DIR/gpt2"
"$PYTHON" tools/preprocess_data.py --input "$OUT_DIR/final.json" --output-prefix "$OUT_DIR/webtext" \
    --vocab "$OUT_DIR/gpt2/vocab.json" --merge-file "$OUT_DIR/gpt2/merges.txt" \
    --tokenizer-type GPT2BPETokenizer --append-eod --dataset-impl mmap --workers "$WORKERS"

echo "Clean corpus: $OUT_DIR/final.json ($(wc -l < "$OUT_DIR/final.json") documents from $NUM_DOCS);" \
     "indexed dataset: $OUT_DIR/webtext_text_document (.bin/.idx)"
