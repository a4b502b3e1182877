"""tools/create_pretraining_data.py against the plain reference algorithm, on the same input.

    nice python benchmarks/bench_create_pretraining_data.py [--input 'text/part-*'] [--dupe-factor 10]

Baseline: the reference script's pipeline as it runs without TensorFlow: tokenize line by line,
``reference.create_training_instances`` (the algorithm in plain Python with ``random.Random``),
then one ``tf.train.Example`` protobuf message per instance, serialized and framed (CRC-32C from
the ``crc32c`` package). Ours: the tool's single-process run (C++ core). Both write the same
records (checked here, byte for byte). Then the per-part mode over all inputs with 1 and N workers.
Without ``--input`` the demo corpus is turned into MLPerf text parts in a temporary directory.
"""
import argparse
import glob
import os
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.core.datasets.tfrecord import TFRecordWriter, decode_example, example_message_class, read_records  # noqa: E402
from megatron.preprocessing.mlperf_bert import create, reference  # noqa: E402
from megatron.tokenizer import bert_uncased_vocab_path  # noqa: E402
from megatron.tokenizer.bert import BertWordPieceLowerCase  # noqa: E402
from tools import create_pretraining_data  # noqa: E402


def reference_run(input_files, output_file, tokenizer, config):
    """The reference script's main(), with protobuf standing in for TensorFlow."""
    all_documents = [[]]
    for path in input_files:
        with open(path, encoding="utf-8", newline="\n") as reader:
            for line in reader:
                line = line.strip()
                if not line:
                    all_documents.append([])
                tokens = tokenizer.tokenize(line)
                if tokens:
                    all_documents[-1].append(tokens)
    all_documents = [x for x in all_documents if x]
    rng = random.Random(config.random_seed)
    vocab_size = create.wordpiece_vocab_size(tokenizer)
    ids, is_continuation = create.special_ids(tokenizer, vocab_size)
    instances = reference.create_training_instances(
        all_documents, config.dupe_factor, config.max_seq_length, config.short_seq_prob, config.masked_lm_prob,
        config.max_predictions_per_seq, vocab_size, rng, is_continuation=is_continuation,
        do_whole_word_mask=False, **ids)
    Example = example_message_class()
    with TFRecordWriter(output_file) as writer:
        for instance in instances:
            example = Example()
            features = reference.instance_features(instance, config.max_seq_length, config.max_predictions_per_seq)
            for name, values in features.items():
                feature = example.features.feature[name]
                (feature.float_list if name == "masked_lm_weights" else feature.int64_list).value.extend(values)
            writer.write(example.SerializeToString())
    return len(instances)


def plain(record):
    return {name: values.tolist() for name, values in decode_example(record).items()}


def make_demo_text(directory, parts):
    corpus = os.path.join(directory, "corpus.json")
    subprocess.run([sys.executable, "tools/make_demo_corpus.py", "--output", corpus], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "megatron.preprocessing.mlperf_bert.text", "--input", corpus,
                    "--output-dir", os.path.join(directory, "text"), "--num-parts", str(parts)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return sorted(glob.glob(os.path.join(directory, "text", "part-*")))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--input", help="glob of MLPerf text parts (default: the demo corpus in 4 parts)")
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--max-predictions-per-seq", type=int, default=76)
    p.add_argument("--dupe-factor", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--skip-reference", action="store_true")
    args = p.parse_args()
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with tempfile.TemporaryDirectory() as tmp:
        parts = sorted(glob.glob(args.input)) if args.input else make_demo_text(tmp, 4)
        vocab = bert_uncased_vocab_path()
        tokenizer = BertWordPieceLowerCase(vocab)
        config = create.CreateConfig(max_seq_length=args.max_seq_length,
                                     max_predictions_per_seq=args.max_predictions_per_seq,
                                     dupe_factor=args.dupe_factor)
        part = parts[0]
        size_mb = os.path.getsize(part) / 2 ** 20
        print(f"input part {part}: {size_mb:.2f} MiB; {len(parts)} parts; seq {config.max_seq_length}, "
              f"preds {config.max_predictions_per_seq}, dupe {config.dupe_factor}")
        rows = []
        start = time.perf_counter()
        count = create_pretraining_data.run_once([part], [os.path.join(tmp, "ours")], tokenizer, config, "cpp")
        ours = time.perf_counter() - start
        if not args.skip_reference:
            start = time.perf_counter()
            ref_count = reference_run([part], os.path.join(tmp, "reference"), tokenizer, config)
            ref = time.perf_counter() - start
            # protobuf orders map entries its own way, so records are compared decoded.
            same = [plain(r) for r in read_records(os.path.join(tmp, "ours"))] == \
                [plain(r) for r in read_records(os.path.join(tmp, "reference"))]
            rows.append(("reference algorithm (Python, protobuf)", ref, ref_count, 1.0))
            rows.append(("tools/create_pretraining_data.py", ours, count, ref / ours))
            print(f"identical output: {same} ({count} records)")
        else:
            rows.append(("tools/create_pretraining_data.py", ours, count, float("nan")))
        common = [f"--vocab_file={vocab}", f"--max_seq_length={config.max_seq_length}",
                  f"--max_predictions_per_seq={config.max_predictions_per_seq}", f"--dupe_factor={config.dupe_factor}"]
        for workers in (1, args.workers):
            start = time.perf_counter()
            code = create_pretraining_data.main([f"--input_file={','.join(parts)}",
                                                 f"--output_dir={os.path.join(tmp, f'w{workers}')}",
                                                 f"--workers={workers}", *common])
            assert code == 0
            rows.append((f"all {len(parts)} parts, --workers {workers}", time.perf_counter() - start, None, None))
        print(f"\n| run | seconds | records | speed-up |\n|---|---:|---:|---:|")
        for name, seconds, records, speedup in rows:
            print(f"| {name} | {seconds:.2f} | {records if records is not None else ''} | "
                  f"{'' if speedup is None else f'{speedup:.1f}x'} |")


if __name__ == "__main__":
    main()
