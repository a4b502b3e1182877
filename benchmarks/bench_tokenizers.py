#!/usr/bin/env python
"""Single-thread tokenizer throughput (MiB/s of UTF-8 text), fast path vs reference.

The text is the ``pydoc_data.topics`` corpus (``tools/make_demo_corpus.py --topics-only``),
tokenized one document at a time as ``tools/preprocess_data.py`` does. GPT-2 and cased BERT
vocabularies are trained on the demo corpus first (no real GPT-2 vocab is available
offline); uncased BERT uses the real 30522-token vocab. References are transformers'
slow tokenizers. Best of ``--repeats`` runs, after one warm-up run.

    python benchmarks/bench_tokenizers.py
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")


def _best_rate(fn, docs, megabytes, repeats):
    fn(docs)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(docs)
        best = min(best, time.perf_counter() - start)
    return megabytes / best


def _plain_tokenizers(files):
    """Hugging Face's own GPT-2 pipeline, for comparison (its splitter is not exact, see gpt2.py)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.BPE.from_file(files["vocab_file"], files["merge_file"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return lambda docs: [tokenizer.encode(d, add_special_tokens=False).ids for d in docs]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpt2-vocab-size", type=int, default=8192)
    parser.add_argument("--skip-reference", action="store_true", help="only time the fast paths")
    args = parser.parse_args(argv)

    from megatron.tokenizer import BertWordPieceCase, BertWordPieceLowerCase, GPT2BPETokenizer, bert_uncased_vocab_path
    from tools.make_demo_corpus import iter_documents, write_corpus
    from tools.train_tokenizer import train_tokenizer

    docs = [doc["text"] for doc in iter_documents(topics_only=True)]
    megabytes = sum(len(d.encode("utf-8")) for d in docs) / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.json")
        write_corpus(corpus)
        gpt2 = train_tokenizer("GPT2BPETokenizer", [corpus], os.path.join(tmp, "gpt2"), args.gpt2_vocab_size)
        cased = train_tokenizer("BertWordPieceCase", [corpus], os.path.join(tmp, "cased"), 8000)["vocab_file"]
        uncased = bert_uncased_vocab_path()

        rows = []
        fast = GPT2BPETokenizer(gpt2["vocab_file"], gpt2["merge_file"])
        rows.append((f"GPT2BPETokenizer ({fast.engine}, {fast.vocab_size} vocab)", fast.tokenize_batch, "gpt2"))
        hf = GPT2BPETokenizer(gpt2["vocab_file"], gpt2["merge_file"], engine="tokenizers")
        rows.append(("GPT2BPETokenizer (tokenizers engine)", hf.tokenize_batch, None))
        rows.append(("plain tokenizers ByteLevel BPE pipeline", _plain_tokenizers(gpt2), None))
        lower = BertWordPieceLowerCase(uncased)
        rows.append(("BertWordPieceLowerCase (30522 vocab)", lower.tokenize_batch, "lower"))
        case = BertWordPieceCase(cased)
        rows.append((f"BertWordPieceCase ({case.vocab_size} vocab)", case.tokenize_batch, "case"))

        references = {}
        if not args.skip_reference:
            from transformers import BertTokenizer, GPT2Tokenizer

            ref_gpt2 = GPT2Tokenizer(gpt2["vocab_file"], gpt2["merge_file"])
            references["gpt2"] = lambda ds: [ref_gpt2.convert_tokens_to_ids(ref_gpt2._tokenize(d)) for d in ds]
            for key, path, lower_case in (("lower", uncased, True), ("case", cased, False)):
                ref = BertTokenizer(path, do_lower_case=lower_case, strip_accents=lower_case)
                ref.wordpiece_tokenizer.max_input_chars_per_word = 200
                references[key] = (lambda r: lambda ds: [r.convert_tokens_to_ids(r._tokenize(d)) for d in ds])(ref)

        print(f"{megabytes:.2f} MiB of pydoc_data.topics text, {len(docs)} documents, one thread\n")
        print(f"| {'tokenizer':<48} | fast MiB/s | reference MiB/s | speed-up |")
        print(f"|{'-' * 50}|-----------:|----------------:|---------:|")
        for label, fn, ref_key in rows:
            rate = _best_rate(fn, docs, megabytes, args.repeats)
            if ref_key in references:
                ref_rate = _best_rate(references[ref_key], docs, megabytes, 1)
                print(f"| {label:<48} | {rate:10.2f} | {ref_rate:15.2f} | {rate / ref_rate:7.1f}x |")
            else:
                print(f"| {label:<48} | {rate:10.2f} | {'':>15} | {'':>8} |")


if __name__ == "__main__":
    main()
