"""MLPerf BERT data tools: the C++ core equals the plain reference algorithm record for record,
the reading of the text equals the reference script's, pick_eval_samples picks the reference's
records, and the tools fail with one line."""
import random

import numpy as np
import pytest

from megatron.core.datasets.tfrecord import decode_example, read_records
from megatron.preprocessing.mlperf_bert import create, reference
from megatron.tokenizer import bert_uncased_vocab_path
from megatron.tokenizer.bert import BertWordPieceLowerCase
from tools import create_pretraining_data, pick_eval_samples

cpp = pytest.importorskip("megatron.preprocessing.mlperf_bert.instances_cpp",
                          reason="C++ core not built (python setup.py build_ext --inplace)")


@pytest.fixture(scope="module")
def tokenizer():
    return BertWordPieceLowerCase(bert_uncased_vocab_path())


def make_text(num_docs, seed=0):
    """Documents of 1..40 sentences of 1..40 words, with runs of blank lines and token-less lines."""
    from pydoc_data.topics import topics

    words = " ".join(topics.values()).split()
    r = random.Random(seed)
    lines = [""]
    for _ in range(num_docs):
        for _ in range(r.choice([1, 1, 2, 3, 5, 10, 40])):
            k = r.randint(1, 40)
            start = r.randint(0, len(words) - k)
            lines.append(" ".join(words[start:start + k]))
            if r.random() < 0.02:
                lines.append("   \t ")  # whitespace only: a document break, as the reference strips it
        lines.append("")
        if r.random() < 0.1:
            lines.append("")
    return "\n".join(lines)


def reference_documents(paths, tokenizer):
    """The reference script's reading loop, line by line."""
    all_documents = [[]]
    for path in paths:
        with open(path, encoding="utf-8", newline="\n") as reader:
            for line in reader:
                line = line.strip()
                if not line:
                    all_documents.append([])
                tokens = tokenizer.tokenize(line)
                if tokens:
                    all_documents[-1].append(tokens)
    return [x for x in all_documents if x]


def test_python_random_stream_replayed_exactly():
    r = random.Random(12345)
    state = list(r.getstate()[1])
    bounds = [0, 1, 2, 3, 7, 100, 2 ** 31 - 1, 2 ** 32, 2 ** 40 + 5, -1, 0, 509, -1] * 50
    draws, final = cpp.random_draws(state, bounds)
    expected = [r.randint(0, b) if b >= 0 else int(r.random() * 2 ** 53) for b in bounds]
    assert draws == expected
    assert tuple(final) == r.getstate()[1]


def test_crc32c_matches_the_crc32c_package():
    import crc32c

    for data in (b"", b"a", b"123456789", bytes(range(256)) * 7):
        crc = crc32c.crc32c(data)
        assert cpp.masked_crc32c(data) == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_reading_equals_the_reference_loop(tmp_path, tokenizer):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(make_text(30, seed=1) + "\nno blank line at the end continues")
    b.write_text("into the next file\n\nsecond document\n")
    corpus = create.read_corpus([str(a), str(b)], tokenizer)
    assert corpus.documents() == reference_documents([str(a), str(b)], tokenizer)


CASES = [  # (docs, max_seq_length, max_predictions, dupe_factor, whole_word, short_seq_prob)
    (60, 128, 20, 1, False, 0.1),
    (40, 64, 10, 3, False, 0.1),   # dupe_factor > 1
    (30, 16, 5, 2, True, 0.3),     # whole-word masking, heavy truncation
    (25, 5, 3, 2, False, 0.5),     # the smallest length: every pair truncated to one token each
    (3, 512, 76, 4, False, 0.1),   # few documents: random-next retries hit the same document
]


@pytest.mark.parametrize("docs,seq,preds,dupe,wwm,short", CASES)
def test_cpp_core_equals_reference_record_for_record(tmp_path, tokenizer, docs, seq, preds, dupe, wwm, short):
    path = tmp_path / "part-00000"
    path.write_text(make_text(docs, seed=docs))
    corpus = create.read_corpus([str(path)], tokenizer)
    config = create.CreateConfig(max_seq_length=seq, max_predictions_per_seq=preds, dupe_factor=dupe,
                                 do_whole_word_mask=wwm, short_seq_prob=short, random_seed=12345)
    outputs, states = {}, {}
    for engine in ("cpp", "python"):
        instances, rng = create.build_instances(corpus, tokenizer, config, engine)
        files = [str(tmp_path / f"{engine}_{k}.tfrecord") for k in range(3)]
        create.write_instances(instances, files)
        outputs[engine] = [read_records(f) for f in files]
        states[engine] = rng.getstate()
    assert states["cpp"] == states["python"]  # the same number of draws, in the same order
    assert outputs["cpp"] == outputs["python"]  # byte for byte, writer by writer

    # And the reference's instances, straight from reference.py with the script's own documents,
    # decoded by protobuf (independent of our encoder), in round-robin order.
    rng = random.Random(12345)
    vocab_size = create.wordpiece_vocab_size(tokenizer)
    ids, is_continuation = create.special_ids(tokenizer, vocab_size)
    expected = reference.create_training_instances(
        reference_documents([str(path)], tokenizer), dupe, seq, short, 0.15, preds, vocab_size, rng,
        is_continuation=is_continuation, do_whole_word_mask=wwm, **ids)
    records = [outputs["cpp"][i % 3][i // 3] for i in range(len(expected))]
    assert sum(len(r) for r in outputs["cpp"]) == len(expected)
    for instance, record in zip(expected, records):
        decoded = decode_example(record)
        for name, values in reference.instance_features(instance, seq, preds).items():
            np.testing.assert_array_equal(decoded[name], np.asarray(values, dtype=decoded[name].dtype))
        n = len(instance.tokens)
        assert n <= seq and decoded["input_mask"].sum() == n
        assert 1 <= len(instance.masked_lm_positions) <= preds


def test_tool_writes_round_robin_and_per_part(tmp_path, tokenizer):
    parts = []
    for k in range(3):
        p = tmp_path / f"part-0000{k}-of-00003"
        p.write_text(make_text(8, seed=10 + k))
        parts.append(p)
    vocab = bert_uncased_vocab_path()
    common = [f"--vocab_file={vocab}", "--do_lower_case=True", "--max_seq_length=32",
              "--max_predictions_per_seq=5", "--random_seed=12345", "--dupe_factor=2"]
    out = tmp_path / "out"
    assert create_pretraining_data.main([f"--input_file={tmp_path}/part-*", f"--output_dir={out}", "--workers=2",
                                         *common]) == 0
    for p in parts:  # each part equals a one-part run of the tool
        single = tmp_path / ("single_" + p.name)
        assert create_pretraining_data.main([f"--input_file={p}", f"--output_file={single}", *common]) == 0
        assert (out / p.name).read_bytes() == single.read_bytes()
    # Two inputs, comma-separated, into two writers = one run over both files.
    both = [str(tmp_path / "w0"), str(tmp_path / "w1")]
    assert create_pretraining_data.main([f"--input_file={parts[0]},{parts[1]}", f"--output_file={','.join(both)}",
                                         "--nodo_lower_case", *common[:1], *common[2:]]) == 0
    n0, n1 = len(read_records(both[0])), len(read_records(both[1]))
    assert n0 - n1 in (0, 1) and n0 > 0


@pytest.mark.parametrize("flags,message", [
    (["--vocab_file=/nonexistent/vocab.txt"], "--vocab_file /nonexistent/vocab.txt: cannot read"),
    (["--max_seq_length=4"], "--max_seq_length=4: must be >= 5"),
    (["--input_file=/nonexistent/part"], "--input_file /nonexistent/part: no such file"),
    (["--input_file={empty}"], "holds no documents"),
    (["--input_file={latin1}"], ":2: not UTF-8"),
    (["--dupe_factor=0"], "--dupe_factor=0: must be >= 1"),
])
def test_tool_errors_are_one_line(tmp_path, capsys, flags, message):
    text = tmp_path / "part"
    text.write_text(make_text(3))
    (tmp_path / "empty").write_text("\n\n   \n")
    (tmp_path / "latin1").write_bytes(b"fine\ncaf\xe9\n")
    args = {"--input_file": str(text), "--output_file": str(tmp_path / "out"),
            "--vocab_file": bert_uncased_vocab_path()}
    for flag in flags:
        key, value = flag.split("=", 1)
        args[key] = value.format(empty=tmp_path / "empty", latin1=tmp_path / "latin1")
    assert create_pretraining_data.main([f"{k}={v}" for k, v in args.items()]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_pick_eval_samples_picks_the_reference_indices(tmp_path, tokenizer):
    text = tmp_path / "eval.txt"
    text.write_text(make_text(20, seed=3))
    source = tmp_path / "eval_intermediate"
    assert create_pretraining_data.main([f"--input_file={text}", f"--output_file={source}",
                                         f"--vocab_file={bert_uncased_vocab_path()}", "--max_seq_length=64",
                                         "--max_predictions_per_seq=10", "--dupe_factor=1"]) == 0
    records = read_records(str(source))
    num = 7
    picked = tmp_path / "eval_7"
    assert pick_eval_samples.main([f"--input_tfrecord={source}", f"--output_tfrecord={picked}",
                                   f"--num_examples_to_pick={num}", "--max_seq_length=64",
                                   "--max_predictions_per_seq=10"]) == 0
    # The reference's pick: int(i * N / num), as floats.
    expected = [records[int(i * len(records) / num)] for i in range(num)]
    assert read_records(str(picked)) == expected  # re-serialised byte-identically (same feature order)
    assert pick_eval_samples.pick_indices(1000, 3) == [0, 333, 666]
    # A length that disagrees with the flags is one line naming the record.
    assert pick_eval_samples.main([f"--input_tfrecord={source}", f"--output_tfrecord={tmp_path / 'bad'}",
                                   "--num_examples_to_pick=2", "--max_seq_length=128"]) == 1
