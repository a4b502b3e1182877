#!/usr/bin/env python
"""Turn loose-JSON corpora into Megatron's indexed datasets (.bin/.idx).

    python tools/preprocess_data.py --input corpus.json --json-keys text title \\
        --split-sentences --tokenizer-type BertWordPieceLowerCase --vocab-file vocab.txt \\
        --output-prefix corpus_indexed --workers 2

Writes ``{output_prefix}_{key}_{document|sentence}.bin/.idx`` per JSON key, documents in
input order whatever the number of workers. ``--dataset-impl retmmap`` writes NeMo's chunked
retrieval format instead (``megatron/core/datasets/retro_indexed_dataset.py``), with NeMo's
flags as NeMo spells them:

    python tools/preprocess_data.py --input=corpus.json --json-keys=text --tokenizer-library=megatron \
        --apply-ftfy --dataset-impl=retmmap --merge-file=merges.txt --vocab-file=vocab.json \
        --tokenizer-type=GPT2BPETokenizer --output-prefix=retro_db --need-pad-id --append-eod \
        --retrieval-db --chunk_size=64 --chunk_stride_size=64 --workers=2
 Outputs appear under their final names only
when complete. The tool never imports torch, so it starts in a fraction of a second.
"""
import argparse
import glob
import gzip
import multiprocessing
import os
import queue as queue_module
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from megatron.core.datasets import indexed_dataset  # noqa: E402
from megatron.core.datasets.retro_indexed_dataset import RetrievalIndexedDatasetBuilder  # noqa: E402
from megatron.preprocessing.encoder import Encoder, encode_in_worker, init_worker  # noqa: E402
from megatron.preprocessing.nemo_flags import add_flag, add_tokenizer_library_flag, resolve_tokenizer_type  # noqa: E402
from megatron.preprocessing.sentence_splitter import (  # noqa: E402
    PUNKT_TRAINING_CHARS, IdentitySplitter, SentenceSplitter, load_or_train_punkt)
from megatron.tokenizer import TOKENIZER_TYPES, build_tokenizer  # noqa: E402

INPUT_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


class PreprocessError(Exception):
    """A problem with the input or the flags, reported as one line."""


def get_args(argv=None):
    parser = argparse.ArgumentParser(description="Tokenize loose JSON into indexed datasets.",
                                     allow_abbrev=False)
    group = parser.add_argument_group("input data")
    group.add_argument("--input", required=True,
                       help="a loose-JSON file (one object per line, optionally .gz), a glob, or a directory")
    group.add_argument("--json-keys", "--json-key", dest="json_keys", nargs="+", default=["text"],
                       help="keys to extract from each JSON object; one output per key "
                            "(--json-key, NeMo's spelling, is the same flag)")
    group.add_argument("--split-sentences", action="store_true", help="split documents into sentences")
    group.add_argument("--keep-newlines", action="store_true",
                       help="keep newlines between sentences when splitting")
    group.add_argument("--lang", default="english", help="language of the Punkt sentence splitter")
    group.add_argument("--skip-bad-lines", action="store_true",
                       help="skip (and count) lines that are not valid documents instead of failing")
    group.add_argument("--apply-ftfy", "--apply_ftfy", dest="apply_ftfy", action="store_true",
                       help="repair mojibake and broken Unicode with ftfy.fix_text before tokenizing")

    group = parser.add_argument_group("tokenizer")
    group.add_argument("--tokenizer-type", "--tokenizer_type", dest="tokenizer_type", default=None,
                       choices=TOKENIZER_TYPES, help="required unless --tokenizer-library names another library")
    add_tokenizer_library_flag(group)
    group.add_argument("--vocab-file", "--vocab", dest="vocab_file", default=None,
                       help="vocabulary file (vocab.txt for BERT, vocab.json for GPT-2)")
    group.add_argument("--merge-file", "--merge_file", dest="merge_file", default=None,
                       help="BPE merges file (GPT-2)")
    group.add_argument("--tokenizer-model", "--tokenizer_model", dest="tokenizer_model", default=None,
                       help="tokenizer.json (HuggingFaceTokenizer) or .model (SentencePieceTokenizer)")
    group.add_argument("--vocab-extra-ids", type=int, default=0, help="number of T5 sentinel tokens to add")
    group.add_argument("--append-eod", action="store_true", help="append an end-of-document token to each document")
    group.add_argument("--need-pad-id", "--need_pad_id", dest="need_pad_id", action="store_true",
                       help="add a <pad> token (id = vocabulary size) when the tokenizer has none; the "
                            "vocabulary then counts it everywhere (dtype, padded model vocabulary)")

    group = parser.add_argument_group("output data")
    group.add_argument("--output-prefix", required=True, help="path prefix of the output datasets")
    group.add_argument("--dataset-impl", default="mmap", choices=["mmap", "cached", "lazy", "retmmap"],
                       help="output format: mmap (default), the legacy non-mmap index (cached and lazy), or "
                            "retmmap (NeMo's RETRO chunked format: documents padded to whole chunks)")

    group = parser.add_argument_group("retmmap (NeMo RETRO) output")
    group.add_argument("--chunk_size", "--retrieval-chunk-size", dest="retrieval_chunk_size", type=int, default=64,
                       help="tokens per retrieval chunk (underscore spelling: --chunk-size is the worker task size)")
    add_flag(group, "--chunk_stride_size", type=int, default=64,
             help="tokens between the starts of consecutive chunks; chunk_size must be a multiple of it")
    add_flag(group, "--retrieval-db", action="store_true",
             help="the output is a retrieval database: one more pad chunk per document so every chunk "
                  "can be read with its continuation")

    group = parser.add_argument_group("runtime")
    group.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    group.add_argument("--partitions", type=int, default=1,
                       help="encode the input as this many contiguous partitions in parallel, then merge")
    group.add_argument("--keep-sequential-samples", action="store_true",
                       help="keep documents in input order across partitions (always the case here)")
    group.add_argument("--chunk-size", type=int, default=32, help="documents per task sent to a worker")
    group.add_argument("--log-interval", type=int, default=1000, help="report progress every N documents")
    args = parser.parse_args(argv)

    error = resolve_tokenizer_type(args)
    if error:
        parser.error(error)
    _check_retmmap_args(parser, args)
    for flag in ("workers", "partitions", "chunk_size", "log_interval"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be at least 1")
    if args.workers % args.partitions:
        parser.error(f"--workers {args.workers} is not divisible by --partitions {args.partitions}")
    if args.keep_newlines and not args.split_sentences:
        parser.error("--keep-newlines only applies with --split-sentences")
    if args.vocab_extra_ids < 0:
        parser.error(f"--vocab-extra-ids {args.vocab_extra_ids} must not be negative")
    if args.tokenizer_type.startswith("Bert") and not args.split_sentences:
        print("Warning: BERT tokenizer without --split-sentences: each document is one sequence; "
              "BERT and ICT training expect sentence-level data.", file=sys.stderr)
    # build_tokenizer reads these training-time attributes.
    args.rank = 0
    args.make_vocab_size_divisible_by = 128
    args.tensor_model_parallel_size = 1
    return args


def _check_retmmap_args(parser, args):
    if args.dataset_impl != "retmmap":
        given = [flag for flag, on in (("--retrieval-db", args.retrieval_db),
                                       ("--chunk_size", args.retrieval_chunk_size != 64),
                                       ("--chunk_stride_size", args.chunk_stride_size != 64)) if on]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            parser.error(f"{', '.join(given)} only {verb} with --dataset-impl retmmap")
        return
    if args.split_sentences:
        parser.error("--split-sentences does not apply with --dataset-impl retmmap (one sequence per document)")
    if args.partitions != 1:
        parser.error("--partitions does not apply with --dataset-impl retmmap (use --workers)")
    if args.retrieval_chunk_size < 1:
        parser.error(f"--chunk_size {args.retrieval_chunk_size} must be at least 1")
    if args.chunk_stride_size < 1 or args.retrieval_chunk_size % args.chunk_stride_size:
        parser.error(f"--chunk_size {args.retrieval_chunk_size} must be a multiple of "
                     f"--chunk_stride_size {args.chunk_stride_size}")


def make_output_builder(args, bin_path, tokenizer):
    """The builder of ``--dataset-impl`` for one output ``.bin``."""
    if args.dataset_impl != "retmmap":
        return indexed_dataset.make_builder(bin_path, args.dataset_impl, tokenizer.vocab_size)
    return RetrievalIndexedDatasetBuilder(
        bin_path, indexed_dataset.best_fitting_dtype(tokenizer.vocab_size), pad_id=tokenizer.pad,
        chunk_size=args.retrieval_chunk_size, stride=args.chunk_stride_size, retrieval_db=args.retrieval_db)


def find_input_files(spec):
    if os.path.isdir(spec):
        files = sorted(os.path.join(spec, f) for f in os.listdir(spec) if f.endswith(INPUT_SUFFIXES))
        if not files:
            raise PreprocessError(f"--input {spec}: directory holds no {', '.join(INPUT_SUFFIXES)} files")
        return files
    if any(c in spec for c in "*?["):
        files = sorted(f for f in glob.glob(spec) if os.path.isfile(f))
        if not files:
            raise PreprocessError(f"--input {spec}: no file matches")
        return files
    if not os.path.isfile(spec):
        raise PreprocessError(f"--input {spec}: no such file")
    return [spec]


def _open(path):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _read_error(path, error):
    """gzip's "Not a gzipped file (b'no')" and a truncated stream's EOFError name no file."""
    return PreprocessError(f"{path}: cannot read: {error}")


def iter_lines(files, first_line=0, last_line=None):
    """Yield ``(path, line number, raw line)`` for global line numbers in [first, last)."""
    global_line = 0
    for path in files:
        try:
            with _open(path) as f:
                for lineno, line in enumerate(f, start=1):
                    if last_line is not None and global_line >= last_line:
                        return
                    if global_line >= first_line:
                        yield path, lineno, line
                    global_line += 1
        except (EOFError, gzip.BadGzipFile) as error:
            raise _read_error(path, error) from None


def check_inputs_not_empty(files):
    """An empty input would give a 0-document dataset; refuse it, naming the file (and read the
    first line of each, so an unreadable or non-gzip .gz is reported before any work)."""
    for path in files:
        try:
            with _open(path) as f:
                first = f.readline()
        except (EOFError, gzip.BadGzipFile) as error:
            raise _read_error(path, error) from None
        if not first:
            raise PreprocessError(f"{path}: the input file is empty (no documents)")


def iter_chunks(files, chunk_size, first_line=0, last_line=None):
    """Group input lines into tasks ``(index, path, first line number, lines)`` within one file."""
    index, chunk, chunk_path, chunk_start = 0, [], None, 0
    for path, lineno, line in iter_lines(files, first_line, last_line):
        if chunk and (path != chunk_path or len(chunk) >= chunk_size):
            yield index, chunk_path, chunk_start, chunk
            index, chunk = index + 1, []
        if not chunk:
            chunk_path, chunk_start = path, lineno
        chunk.append(line)
    if chunk:
        yield index, chunk_path, chunk_start, chunk


def count_lines(files):
    return sum(1 for _ in iter_lines(files))


def punkt_sample(files, json_keys, limit=PUNKT_TRAINING_CHARS):
    """The first ``limit`` characters of the input's texts, to train a Punkt model on."""
    import json

    parts, size = [], 0
    for _, _, line in iter_lines(files):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if not isinstance(doc, dict):
            continue
        for key in json_keys:
            value = doc.get(key)
            if isinstance(value, str) and value.strip():
                parts.append(value)
                size += len(value)
        if size >= limit:
            break
    return "\n\n".join(parts)[:limit]


def output_prefix(args, key, partition=None):
    level = "sentence" if args.split_sentences else "document"
    base = args.output_prefix if partition is None else f"{args.output_prefix}_{partition}"
    return f"{base}_{key}_{level}"


class Progress:
    """A tqdm bar (documents, docs/s, MiB/s) on a terminal; elsewhere (logs, pipes) a line every
    ``--log-interval`` documents, as Megatron prints."""

    def __init__(self, interval, label=""):
        self.interval, self.label = interval, label
        self.start = time.perf_counter()
        self.documents = self.bytes = 0
        self.next_report = interval
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(desc=label.strip() or "documents", unit=" docs", unit_scale=True, file=sys.stderr,
                            dynamic_ncols=True)

    def update(self, documents, nbytes):
        self.documents += documents
        self.bytes += nbytes
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        if self.bar is not None:
            self.bar.update(documents)
            self.bar.set_postfix_str(f"{self.bytes / elapsed / 2**20:.2f} MiB/s", refresh=False)
            return
        if self.documents >= self.next_report:
            print(f"{self.label}Processed {self.documents} documents "
                  f"({self.documents / elapsed:.1f} docs/s, {self.bytes / elapsed / 2**20:.2f} MiB/s).",
                  file=sys.stderr, flush=True)
            while self.next_report <= self.documents:
                self.next_report += self.interval

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _format_bad(bad):
    path, lineno, message = bad
    return f"{path}:{lineno}: {message}"


def encode_partition(args, files, encoder, workers, partition=None, line_range=(0, None)):
    """Encode one contiguous range of input lines into its own datasets; returns stats."""
    prefixes = {key: output_prefix(args, key, partition) for key in args.json_keys}
    builders = {key: make_output_builder(args, indexed_dataset.get_bin_path(p), encoder.tokenizer)
                for key, p in prefixes.items()}
    stats = {"documents": 0, "sentences": 0, "tokens": 0, "bytes": 0, "bad_lines": 0,
             "bad_examples": [], "empty": {key: 0 for key in args.json_keys},
             "written": {key: 0 for key in args.json_keys}}
    label = "" if partition is None else f"[partition {partition}] "
    progress = Progress(args.log_interval, label)
    chunks = iter_chunks(files, args.chunk_size, *line_range)
    pool = None
    try:
        if workers == 1:
            results = map(encoder.encode, chunks)
        else:
            context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                                  else "spawn")
            pool = context.Pool(workers, initializer=init_worker, initargs=(encoder,))
            results = pool.imap(encode_in_worker, chunks, chunksize=1)
        for result in results:
            if result.bad_lines:
                if not args.skip_bad_lines:
                    raise PreprocessError(_format_bad(result.bad_lines[0]))
                stats["bad_lines"] += len(result.bad_lines)
                room = 5 - len(stats["bad_examples"])
                stats["bad_examples"].extend(_format_bad(b) for b in result.bad_lines[:max(room, 0)])
            for key, encoded in result.keys.items():
                _write(builders[key], encoded)
                stats["empty"][key] += encoded.empty_documents
                stats["written"][key] += len(encoded.document_lengths)
            for name in ("documents", "sentences", "tokens", "bytes"):
                stats[name] += getattr(result, name)
            progress.update(result.documents, result.bytes)
        for key, builder in builders.items():
            builder.finalize(indexed_dataset.get_idx_path(prefixes[key]))
    except OSError as error:
        for builder in builders.values():
            builder.abort()
        if error.filename is None:  # a full disk says "[Errno 28] No space left on device", no file
            raise PreprocessError(f"writing {', '.join(p + '.bin/.idx' for p in prefixes.values())}: "
                                  f"{error.strerror or error}") from error
        raise
    except BaseException:
        for builder in builders.values():
            builder.abort()
        raise
    finally:
        progress.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return stats


def _write(builder, encoded):
    tokens, lengths = encoded.tokens, encoded.sequence_lengths
    if isinstance(builder, RetrievalIndexedDatasetBuilder):
        # One sequence per document (no sentence splitting): the chunk's documents in one write.
        builder.add_documents(tokens, lengths)
        return
    token_start = sequence_start = 0
    sequence_ends = np.cumsum(lengths, dtype=np.int64)
    for count in encoded.document_lengths.tolist():
        sequence_stop = sequence_start + count
        token_stop = int(sequence_ends[sequence_stop - 1])
        builder.add_document(tokens[token_start:token_stop], lengths[sequence_start:sequence_stop])
        sequence_start, token_start = sequence_stop, token_stop


def _partition_main(args, files, encoder, workers, partition, line_range, queue):
    try:
        queue.put((partition, encode_partition(args, files, encoder, workers, partition, line_range), None))
    except BaseException as e:  # report to the parent, which prints one line
        queue.put((partition, None, str(e) if isinstance(e, PreprocessError) else f"{type(e).__name__}: {e}"))


def encode_partitions(args, files, encoder):
    """Encode ``--partitions`` contiguous line ranges in parallel processes, then merge in order."""
    total = count_lines(files)
    bounds = [round(total * k / args.partitions) for k in range(args.partitions + 1)]
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    queue = context.Queue()
    workers = args.workers // args.partitions
    processes = [context.Process(target=_partition_main,
                                 args=(args, files, encoder, workers, k, (bounds[k], bounds[k + 1]), queue))
                 for k in range(args.partitions)]
    for p in processes:
        p.start()
    results, errors = {}, []
    while len(results) < len(processes):
        try:
            partition, stats, error = queue.get(timeout=1.0)
        except queue_module.Empty:
            # A partition that died without reporting (killed, out of memory) must not hang us.
            for k, p in enumerate(processes):
                if k not in results and p.exitcode not in (None, 0) and queue.empty():
                    results[k] = None
                    errors.append((k, f"partition {k} died with exit code {p.exitcode}"))
            continue
        results[partition] = stats
        if error:
            errors.append((partition, error))
    for p in processes:
        p.join()
    try:
        if errors:
            raise PreprocessError(sorted(errors)[0][1])
        for key in args.json_keys:
            final = output_prefix(args, key)
            builder = indexed_dataset.make_builder(indexed_dataset.get_bin_path(final), args.dataset_impl,
                                                   encoder.tokenizer.vocab_size)
            try:
                for k in range(args.partitions):
                    builder.merge_file_(output_prefix(args, key, k))
                builder.finalize(indexed_dataset.get_idx_path(final))
            except BaseException:
                builder.abort()
                raise
    finally:
        for key in args.json_keys:
            for k in range(args.partitions):
                for path_fn in (indexed_dataset.get_bin_path, indexed_dataset.get_idx_path):
                    path = path_fn(output_prefix(args, key, k))
                    if os.path.exists(path):
                        os.unlink(path)
    merged = {"documents": 0, "sentences": 0, "tokens": 0, "bytes": 0, "bad_lines": 0, "bad_examples": [],
              "empty": {key: 0 for key in args.json_keys}, "written": {key: 0 for key in args.json_keys}}
    for k in range(args.partitions):
        stats = results[k]
        for name in ("documents", "sentences", "tokens", "bytes", "bad_lines"):
            merged[name] += stats[name]
        merged["bad_examples"].extend(stats["bad_examples"])
        for key in args.json_keys:
            merged["empty"][key] += stats["empty"][key]
            merged["written"][key] += stats["written"][key]
    merged["bad_examples"] = merged["bad_examples"][:5]
    return merged


def build_splitter(args, files):
    if not args.split_sentences:
        return IdentitySplitter()
    cache = f"{args.output_prefix}_punkt_{args.lang}.json"
    params, source = load_or_train_punkt(args.lang, lambda: punkt_sample(files, args.json_keys), cache,
                                         log=lambda msg: print(msg, file=sys.stderr))
    print(f"Sentence splitter: {source}", file=sys.stderr)
    return SentenceSplitter(params, keep_newlines=args.keep_newlines)


def run(args):
    start = time.perf_counter()
    files = find_input_files(args.input)
    check_inputs_not_empty(files)
    out_dir = os.path.dirname(os.path.abspath(args.output_prefix))
    if not os.path.isdir(out_dir):
        raise PreprocessError(f"--output-prefix {args.output_prefix}: directory {out_dir} does not exist")
    tokenizer = build_tokenizer(args)
    if args.dataset_impl == "retmmap":
        try:
            tokenizer.pad
        except (AttributeError, NotImplementedError, KeyError):
            raise PreprocessError(f"--dataset-impl retmmap pads documents to whole chunks, but {tokenizer.name} "
                                  f"has no pad token: add --need-pad-id") from None
    if args.append_eod:
        try:
            tokenizer.eod
        except (AttributeError, NotImplementedError, ValueError) as e:
            raise PreprocessError(f"--append-eod: {e}") from None
    dtype = indexed_dataset.best_fitting_dtype(tokenizer.vocab_size)
    splitter = build_splitter(args, files)
    encoder = Encoder(args.json_keys, tokenizer, splitter, args.append_eod, dtype, apply_ftfy=args.apply_ftfy)
    if args.partitions == 1:
        stats = encode_partition(args, files, encoder, args.workers)
    else:
        stats = encode_partitions(args, files, encoder)
    if not any(stats["written"].values()):
        for key in args.json_keys:
            for path in (indexed_dataset.get_bin_path(output_prefix(args, key)),
                         indexed_dataset.get_idx_path(output_prefix(args, key))):
                if os.path.exists(path):
                    os.unlink(path)
        raise PreprocessError(f"--input {args.input}: no document has text under --json-keys "
                              f"{' '.join(args.json_keys)}; nothing was written")
    elapsed = time.perf_counter() - start
    level = "sentences" if args.split_sentences else "sequences"
    print(f"Done: {stats['documents']} documents, {stats['sentences']} {level}, {stats['tokens']} tokens "
          f"from {stats['bytes'] / 2**20:.2f} MiB in {elapsed:.2f} s "
          f"({stats['bytes'] / 2**20 / max(elapsed, 1e-9):.2f} MiB/s, {args.workers} workers).")
    for key in args.json_keys:
        note = f", {stats['empty'][key]} empty documents skipped" if stats["empty"][key] else ""
        print(f"  {output_prefix(args, key)}: {stats['written'][key]} documents{note}")
        if args.dataset_impl == "retmmap":
            from megatron.core.datasets.retro_indexed_dataset import RetrievalIndexedDataset

            ds = RetrievalIndexedDataset(output_prefix(args, key))
            print(f"    retmmap: {ds.chunks} chunks of {ds.chunk_size} tokens (stride {ds.stride}), "
                  f"pad id {tokenizer.pad}, retrieval DB: {ds.retrieval_db}")
    if len(set(stats["written"].values())) > 1:
        print("Warning: the outputs of the JSON keys hold different numbers of documents (empty documents "
              "were skipped per key), so they are not aligned document by document.", file=sys.stderr)
    if stats["bad_lines"]:
        print(f"Skipped {stats['bad_lines']} bad lines, e.g.:", file=sys.stderr)
        for example in stats["bad_examples"]:
            print(f"  {example}", file=sys.stderr)
    return stats


def main(argv=None):
    args = get_args(argv)
    try:
        run(args)
    except (PreprocessError, ValueError, OSError, indexed_dataset.IndexedDatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
