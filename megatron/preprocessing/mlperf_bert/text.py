"""Loose-JSON documents -> MLPerf's text format (one sentence per line, a blank line between documents).

    python -m megatron.preprocessing.mlperf_bert.text --input corpus.json --output-dir text/ \\
        --num-parts 4 --eval-documents 20

Writes ``part-0000K-of-0000N`` training parts (documents dealt round robin) and ``eval.txt``
(the last ``--eval-documents`` documents), as the MLPerf Wikipedia pipeline lays its files out.
Sentences come from the project's Punkt splitter (trained on the input when NLTK's data is absent).
"""
import argparse
import json
import os
import sys

from megatron.core.fileio import atomic_write_text
from megatron.preprocessing.sentence_splitter import PUNKT_TRAINING_CHARS, SentenceSplitter, load_or_train_punkt


def read_documents(path, key="text"):
    documents = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                documents.append(json.loads(line)[key])
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{path}:{lineno}: not a JSON object with a {key!r} string") from None
    if not documents:
        raise ValueError(f"{path}: no documents")
    return documents


def document_lines(text, splitter):
    """The sentences of ``text``, one per line, each on a single line."""
    lines = []
    for paragraph in text.split("\n\n"):
        for sentence in splitter.split(paragraph):
            sentence = " ".join(sentence.split())
            if sentence:
                lines.append(sentence)
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True, help="loose JSON, one document per line")
    p.add_argument("--json-key", default="text")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--num-parts", type=int, default=1)
    p.add_argument("--eval-documents", type=int, default=0, help="last documents written to eval.txt instead")
    args = p.parse_args(argv)
    try:
        documents = read_documents(args.input, args.json_key)
        if args.num_parts < 1 or not 0 <= args.eval_documents < len(documents):
            raise ValueError(f"--num-parts {args.num_parts} must be >= 1 and --eval-documents {args.eval_documents} "
                             f"below the {len(documents)} documents")
        params, source = load_or_train_punkt(
            "english", lambda: "\n".join(documents)[:PUNKT_TRAINING_CHARS],
            os.path.join(args.output_dir, "punkt_english.json"))
        splitter = SentenceSplitter(params)
        texts = ["\n".join(document_lines(d, splitter)) + "\n" for d in documents]
        train, held_out = texts[:len(texts) - args.eval_documents], texts[len(texts) - args.eval_documents:]
        for k in range(args.num_parts):
            path = os.path.join(args.output_dir, f"part-{k:05d}-of-{args.num_parts:05d}")
            atomic_write_text(path, "\n".join(train[k::args.num_parts]))
        if held_out:
            atomic_write_text(os.path.join(args.output_dir, "eval.txt"), "\n".join(held_out))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(train)} training documents in {args.num_parts} parts, {len(held_out)} eval documents "
          f"under {args.output_dir} (sentences: {source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
