#!/usr/bin/env python
"""Train a BERT WordPiece ``vocab.txt`` or a GPT-2 byte-level BPE ``vocab.json`` + ``merges.txt``.

The corpus is loose JSON (one object per line), as read by ``tools/preprocess_data.py``.
Training uses Hugging Face ``tokenizers``; the files written are in the formats of the
original BERT and GPT-2 releases, so ``megatron.tokenizer`` loads them like the real ones:

* WordPiece: ``vocab.txt``, one token per line, ``[PAD]`` at id 0 then ``[UNK] [CLS] [SEP]
  [MASK]``, continuation pieces prefixed by ``##``.
* BPE: ``vocab.json`` (token -> id, the 256 byte-level characters included) and
  ``merges.txt`` (``#version: 0.2`` then one ``left right`` pair per line, in merge order),
  with ``<|endoftext|>`` as the last id.

    python tools/train_tokenizer.py --input corpus.json --tokenizer-type GPT2BPETokenizer \
        --vocab-size 4096 --output-dir vocab/
"""
import argparse
import json
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.core.fileio import atomic_write_text  # noqa: E402

BERT_TYPES = ("BertWordPieceLowerCase", "BertWordPieceCase")
GPT2_TYPE = "GPT2BPETokenizer"
TRAINABLE_TYPES = BERT_TYPES + (GPT2_TYPE,)
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
GPT2_EOD = "<|endoftext|>"


def iter_texts(paths, json_keys=("text",)):
    """Yield the string under each of ``json_keys`` for every line of every loose-JSON file.

    A line that is not a JSON object, lacks a key or holds a non-string raises a one-line
    ValueError naming ``file:line``; blank lines are skipped.
    """
    for path in paths:
        try:
            handle = open(path, encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"--input {path}: cannot open ({exc.strerror})") from None
        with handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
                if not isinstance(doc, dict):
                    raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(doc).__name__}")
                for key in json_keys:
                    if key not in doc:
                        raise ValueError(f"{path}:{lineno}: missing key {key!r} (--json-keys)")
                    text = doc[key]
                    if not isinstance(text, str):
                        raise ValueError(f"{path}:{lineno}: key {key!r} holds {type(text).__name__}, not a string")
                    yield text


def _train_wordpiece(texts, vocab_size, min_frequency, lower_case):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=200))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lower_case, lowercase=lower_case)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
        special_tokens=list(BERT_SPECIAL_TOKENS), continuing_subword_prefix="##")
    tokenizer.train_from_iterator(texts, trainer=trainer)
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise RuntimeError("the trained WordPiece vocabulary has gaps in its ids")
    for expected_id, token in enumerate(BERT_SPECIAL_TOKENS):
        if vocab.get(token) != expected_id:
            raise RuntimeError(
                f"the trained WordPiece vocabulary puts {token} at id {vocab.get(token)}, not {expected_id}")
    return tokens


def _train_byte_level_bpe(texts, vocab_size, min_frequency):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    # GPT-2 splits with its regex and never adds a prefix space.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,  # the last id is reserved for <|endoftext|>
        min_frequency=min_frequency, show_progress=False, special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    vocab = dict(model["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    if GPT2_EOD in vocab:
        raise RuntimeError(f"the corpus produced {GPT2_EOD!r} as an ordinary BPE token")
    vocab[GPT2_EOD] = len(vocab)
    return vocab, merges


def train_tokenizer(tokenizer_type, inputs, output_dir, vocab_size, json_keys=("text",), min_frequency=2):
    """Train a tokenizer and write its files into ``output_dir``.

    Returns a dict naming what was written: ``{"vocab_file": path}`` for WordPiece,
    ``{"vocab_file": path, "merge_file": path}`` for BPE (the keys are Megatron's flags).
    """
    if tokenizer_type not in TRAINABLE_TYPES:
        raise ValueError(
            f"--tokenizer-type {tokenizer_type} cannot be trained; choose one of {', '.join(TRAINABLE_TYPES)}")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise ValueError("--input: no input file given")
    minimum = len(BERT_SPECIAL_TOKENS) + 1 if tokenizer_type in BERT_TYPES else 257 + 1
    if vocab_size < minimum:
        raise ValueError(f"--vocab-size {vocab_size} is below the minimum {minimum} for {tokenizer_type}")
    if min_frequency < 1:
        raise ValueError(f"--min-frequency {min_frequency} must be at least 1")
    for path in inputs:
        if not os.path.isfile(path):
            raise ValueError(f"--input {path}: no such file")
    os.makedirs(output_dir, exist_ok=True)
    texts = iter_texts([os.fspath(p) for p in inputs], tuple(json_keys))

    if tokenizer_type in BERT_TYPES:
        lower_case = tokenizer_type == "BertWordPieceLowerCase"
        tokens = _train_wordpiece(texts, vocab_size, min_frequency, lower_case=lower_case)
        vocab_file = os.path.join(output_dir, "vocab.txt")
        atomic_write_text(vocab_file, "".join(token + "\n" for token in tokens))
        return {"vocab_file": vocab_file}

    vocab, merges = _train_byte_level_bpe(texts, vocab_size, min_frequency)
    vocab_file = os.path.join(output_dir, "vocab.json")
    merge_file = os.path.join(output_dir, "merges.txt")
    atomic_write_text(vocab_file, json.dumps(vocab))
    atomic_write_text(merge_file, "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return {"vocab_file": vocab_file, "merge_file": merge_file}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="loose-JSON corpus file(s)")
    parser.add_argument("--json-keys", nargs="+", default=["text"], help="keys whose strings are trained on")
    parser.add_argument("--tokenizer-type", required=True, choices=TRAINABLE_TYPES)
    parser.add_argument("--vocab-size", type=int, required=True,
                        help="final vocabulary size (for BPE including the 256 bytes and <|endoftext|>)")
    parser.add_argument("--min-frequency", type=int, default=2, help="least count of a pair to be merged")
    parser.add_argument("--output-dir", required=True, help="directory for vocab.txt or vocab.json + merges.txt")
    args = parser.parse_args(argv)
    try:
        written = train_tokenizer(args.tokenizer_type, args.input, args.output_dir, args.vocab_size,
                                  json_keys=args.json_keys, min_frequency=args.min_frequency)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for flag, path in written.items():
        print(f"--{flag.replace('_', '-')} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
