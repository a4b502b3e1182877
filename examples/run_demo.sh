#!/usr/bin/env bash
# The demo, end to end on the CPU with bundled data only (no network):
#   1. write the demo corpus (Python's own documentation as loose JSON),
#   2. train a GPT-2-style BPE vocabulary on it (no GPT-2 vocabulary can be downloaded),
#   3. preprocess it for GPT (BPE, one sequence per document, end-of-document tokens)
#      and for BERT (the real BERT uncased vocabulary, split into sentences).
# Everything goes under $DEMO_DIR (default ./demo).
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-demo}
WORKERS=${WORKERS:-2}
mkdir -p "$DEMO_DIR"

python tools/make_demo_corpus.py --output "$DEMO_DIR/corpus.json"

python tools/train_tokenizer.py --input "$DEMO_DIR/corpus.json" --json-keys text \
    --tokenizer-type GPT2BPETokenizer --vocab-size 8192 --output-dir "$DEMO_DIR/gpt2"

BERT_VOCAB=$(python -c "from megatron.tokenizer import bert_uncased_vocab_path; print(bert_uncased_vocab_path())")

python tools/preprocess_data.py --input "$DEMO_DIR/corpus.json" --output-prefix "$DEMO_DIR/gpt" \
    --vocab "$DEMO_DIR/gpt2/vocab.json" --merge-file "$DEMO_DIR/gpt2/merges.txt" \
    --dataset-impl mmap --tokenizer-type GPT2BPETokenizer --append-eod --workers "$WORKERS"

python tools/preprocess_data.py --input "$DEMO_DIR/corpus.json" --json-keys text title \
    --split-sentences --tokenizer-type BertWordPieceLowerCase --vocab-file "$BERT_VOCAB" \
    --output-prefix "$DEMO_DIR/bert" --workers "$WORKERS"

echo "Demo data ready in $DEMO_DIR: gpt_text_document, bert_text_sentence, bert_title_sentence (.bin/.idx)"
