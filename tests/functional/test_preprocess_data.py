"""tools/preprocess_data.py end to end: the seed command lines, formats, order, bad input."""
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron.core.datasets.indexed_dataset import IndexedDataset, infer_dataset_impl, make_dataset
from megatron.tokenizer import bert_uncased_vocab_path, build_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "preprocess_data.py")


def run_tool(*args, cwd=None, check=True):
    result = subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"preprocess_data failed ({result.returncode}):\n{result.stderr}")
    return result


def write_jsonl(path, docs):
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc) + "\n")
    return path


@pytest.fixture(scope="module")
def gpt2_files(tmp_path_factory, demo_corpus):
    from tools.train_tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("gpt2")
    train_tokenizer("GPT2BPETokenizer", [demo_corpus], str(out), vocab_size=2000)
    return str(out / "vocab.json"), str(out / "merges.txt")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, demo_corpus):
    """The first 40 documents of the demo corpus (keeps the subprocess runs short)."""
    path = tmp_path_factory.mktemp("small") / "corpus.json"
    with open(demo_corpus, encoding="utf-8") as src, open(path, "w", encoding="utf-8") as dst:
        for _, line in zip(range(40), src):
            dst.write(line)
    return str(path)


def bert_args(vocab_extra_ids=0):
    class Args:
        tokenizer_type = "BertWordPieceLowerCase"
        vocab_file = bert_uncased_vocab_path()
        merge_file = None
        tokenizer_model = None
        rank = 1  # silence the padding message
        make_vocab_size_divisible_by = 128
        tensor_model_parallel_size = 1

    args = Args()
    args.vocab_extra_ids = vocab_extra_ids
    return args


def test_bert_seed_command_line(tmp_path, small_corpus):
    """The README's BERT command, as written (5 workers, two keys, sentence split)."""
    corpus = tmp_path / "corpus.json"
    corpus.write_bytes(open(small_corpus, "rb").read())
    vocab = tmp_path / "vocab.txt"
    vocab.write_bytes(open(bert_uncased_vocab_path(), "rb").read())
    result = run_tool("--input", "corpus.json", "--json-keys", "text", "title", "--split-sentences",
                      "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", "vocab.txt",
                      "--output-prefix", "corpus_indexed", "--workers", "5", cwd=tmp_path)
    assert "Punkt" in result.stderr  # the offline fallback announced itself
    text = IndexedDataset(str(tmp_path / "corpus_indexed_text_sentence"))
    title = IndexedDataset(str(tmp_path / "corpus_indexed_title_sentence"))
    assert len(text.doc_idx) - 1 == 40 and len(title.doc_idx) - 1 == 40
    assert len(text) > 40 * 3  # documents were split into many sentences
    assert text.doc_idx[0] == 0 and text.doc_idx[-1] == len(text)
    assert text.dtype == np.uint16

    # Each document's sentences, decoded, are the document's words in order.
    tokenizer = build_tokenizer(bert_args())
    docs = [json.loads(line) for line in open(small_corpus, encoding="utf-8")]
    for d in (0, 7, 39):
        ids = np.concatenate([text[i] for i in range(text.doc_idx[d], text.doc_idx[d + 1])]).tolist()
        assert ids == tokenizer.tokenize(docs[d]["text"])
        title_ids = np.concatenate(title[title.doc_idx[d]:title.doc_idx[d + 1]]).tolist()
        assert title_ids == tokenizer.tokenize(docs[d]["title"])


def test_gpt2_seed_command_line(tmp_path, small_corpus, gpt2_files):
    """The README's GPT-2 command with --vocab (old spelling), --dataset-impl mmap and --append-eod."""
    vocab, merges = gpt2_files
    run_tool("--input", small_corpus, "--output-prefix", tmp_path / "my-gpt2", "--vocab", vocab,
             "--dataset-impl", "mmap", "--tokenizer-type", "GPT2BPETokenizer", "--merge-file", merges,
             "--append-eod")
    ds = IndexedDataset(str(tmp_path / "my-gpt2_text_document"))
    assert len(ds) == 40 and list(ds.doc_idx) == list(range(41))

    class Args:
        tokenizer_type = "GPT2BPETokenizer"
        vocab_file, merge_file = vocab, merges
        rank = 1

    tokenizer = build_tokenizer(Args())
    docs = [json.loads(line) for line in open(small_corpus, encoding="utf-8")]
    for d in range(40):
        assert ds[d].tolist() == tokenizer.tokenize(docs[d]["text"]) + [tokenizer.eod]


def _read_all(prefix):
    ds = IndexedDataset(prefix)
    return [ds[i].tolist() for i in range(len(ds))], ds.doc_idx.tolist()


def test_same_output_for_any_worker_count_chunking_and_partitions(tmp_path, small_corpus):
    common = ["--input", small_corpus, "--json-keys", "text", "--split-sentences",
              "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", bert_uncased_vocab_path()]
    outputs = []
    for name, extra in [("w1", ["--workers", "1"]), ("w3", ["--workers", "3", "--chunk-size", "4"]),
                        ("p2", ["--workers", "2", "--partitions", "2", "--chunk-size", "3"])]:
        prefix = tmp_path / name
        run_tool(*common, "--output-prefix", prefix, *extra)
        outputs.append(_read_all(f"{prefix}_text_sentence"))
        # The partition files were merged and removed.
        assert not os.path.exists(f"{prefix}_0_text_sentence.bin")
    assert outputs[0] == outputs[1] == outputs[2]
    # The idx/bin files are byte-identical too.
    for suffix in (".bin", ".idx"):
        blobs = {open(f"{tmp_path / n}_text_sentence{suffix}", "rb").read() for n in ("w1", "w3", "p2")}
        assert len(blobs) == 1


def test_directory_glob_and_gzip_inputs(tmp_path, gpt2_files):
    vocab, merges = gpt2_files
    docs = [{"text": f"Document number {i}. It has two sentences."} for i in range(6)]
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "a.json", docs[:2])
    with gzip.open(data / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        for doc in docs[2:4]:
            f.write(json.dumps(doc) + "\n")
    write_jsonl(data / "c.jsonl", docs[4:])
    (data / "notes.txt").write_text("not an input")
    gpt = ["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", vocab, "--merge-file", merges]
    run_tool("--input", data, "--output-prefix", tmp_path / "dir", *gpt)
    run_tool("--input", str(data / "*.json*"), "--output-prefix", tmp_path / "glob", *gpt)
    run_tool("--input", str(data / "b.jsonl.gz"), "--output-prefix", tmp_path / "gz", *gpt)
    from megatron.tokenizer import build_tokenizer as build

    class Args:
        tokenizer_type = "GPT2BPETokenizer"
        vocab_file, merge_file = vocab, merges
        rank = 1

    tokenizer = build(Args())
    expected = [tokenizer.tokenize(d["text"]) for d in docs]
    assert _read_all(str(tmp_path / "dir_text_document"))[0] == expected
    assert _read_all(str(tmp_path / "glob_text_document"))[0] == expected
    assert _read_all(str(tmp_path / "gz_text_document"))[0] == expected[2:4]


def test_legacy_dataset_impls(tmp_path, small_corpus, gpt2_files):
    vocab, merges = gpt2_files
    gpt = ["--input", small_corpus, "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", vocab,
           "--merge-file", merges, "--append-eod"]
    run_tool(*gpt, "--output-prefix", tmp_path / "mmap")
    reference = _read_all(str(tmp_path / "mmap_text_document"))
    for impl in ("cached", "lazy"):
        prefix = str(tmp_path / impl)
        run_tool(*gpt, "--output-prefix", prefix, "--dataset-impl", impl)
        assert infer_dataset_impl(f"{prefix}_text_document") == "cached"
        ds = make_dataset(f"{prefix}_text_document", impl)
        assert [ds[i].tolist() for i in range(len(ds))] == reference[0]
        assert ds.doc_idx.tolist() == reference[1]


def test_eod_on_last_sentence_and_empty_documents(tmp_path, gpt2_files):
    vocab, merges = gpt2_files
    docs = [{"text": "First sentence here. Second one follows."}, {"text": "   "}, {"text": ""},
            {"text": "Only one sentence."}]
    corpus = write_jsonl(tmp_path / "c.json", docs)
    result = run_tool("--input", corpus, "--output-prefix", tmp_path / "o", "--split-sentences",
                      "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", vocab, "--merge-file", merges,
                      "--append-eod")
    assert "2 empty documents skipped" in result.stdout
    ds = IndexedDataset(str(tmp_path / "o_text_sentence"))
    assert ds.doc_idx.tolist() == [0, 2, 3]

    class Args:
        tokenizer_type = "GPT2BPETokenizer"
        vocab_file, merge_file = vocab, merges
        rank = 1

    eod = build_tokenizer(Args()).eod
    assert ds[0][-1] != eod and ds[1][-1] == eod and ds[2][-1] == eod
    assert (np.concatenate([ds[0], ds[1]]) == eod).sum() == 1


def test_keep_newlines_keeps_text_between_sentences(tmp_path, gpt2_files):
    vocab, merges = gpt2_files
    text = "A first line ends here.\nThe second line follows.\n\nA new paragraph starts."
    corpus = write_jsonl(tmp_path / "c.json", [{"text": text}])
    common = ["--input", corpus, "--split-sentences", "--tokenizer-type", "GPT2BPETokenizer",
              "--vocab-file", vocab, "--merge-file", merges]
    run_tool(*common, "--output-prefix", tmp_path / "keep", "--keep-newlines")
    run_tool(*common, "--output-prefix", tmp_path / "drop")

    class Args:
        tokenizer_type = "GPT2BPETokenizer"
        vocab_file, merge_file = vocab, merges
        rank = 1

    tokenizer = build_tokenizer(Args())
    keep = IndexedDataset(str(tmp_path / "keep_text_sentence"))
    drop = IndexedDataset(str(tmp_path / "drop_text_sentence"))
    assert len(keep) == len(drop) == 3
    assert "".join(tokenizer.detokenize(keep[i].tolist()) for i in range(3)) == text
    assert "\n" not in "".join(tokenizer.detokenize(drop[i].tolist()) for i in range(3))


@pytest.mark.parametrize("line, message", [
    ('{"text": "fine"}\n{"text": broken}\n', "c.json:2: not valid JSON"),
    ('{"text": "fine"}\n["a list"]\n', "c.json:2: expected a JSON object, got list"),
    ('{"text": "fine"}\n\n{"body": "x"}\n', "c.json:3: missing key 'text'"),
    ('{"text": 12}\n', "c.json:1: key 'text' holds a int, not a string"),
])
def test_bad_lines_fail_with_file_and_line(tmp_path, gpt2_files, line, message):
    vocab, merges = gpt2_files
    corpus = tmp_path / "c.json"
    corpus.write_text(line)
    result = run_tool("--input", corpus, "--output-prefix", tmp_path / "o", "--tokenizer-type",
                      "GPT2BPETokenizer", "--vocab-file", vocab, "--merge-file", merges, check=False)
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # Nothing is left behind, under the final name or a temporary one.
    assert sorted(os.listdir(tmp_path)) == ["c.json"]


def test_skip_bad_lines_counts_and_reports(tmp_path, gpt2_files):
    vocab, merges = gpt2_files
    corpus = tmp_path / "c.json"
    corpus.write_text('{"text": "one"}\nnot json\n{"text": "two"}\n{"title": "x"}\n')
    result = run_tool("--input", corpus, "--output-prefix", tmp_path / "o", "--tokenizer-type",
                      "GPT2BPETokenizer", "--vocab-file", vocab, "--merge-file", merges, "--skip-bad-lines")
    assert "Skipped 2 bad lines" in result.stderr
    assert "c.json:2: not valid JSON" in result.stderr and "c.json:4: missing key 'text'" in result.stderr
    assert len(IndexedDataset(str(tmp_path / "o_text_document"))) == 2


@pytest.mark.parametrize("args, message", [
    (["--input", "missing.json"], "--input missing.json: no such file"),
    (["--input", "c.json", "--append-eod"], "--append-eod"),
    (["--input", "c.json", "--workers", "3", "--partitions", "2"], "--workers 3 is not divisible by --partitions 2"),
    (["--input", "c.json", "--keep-newlines"], "--keep-newlines only applies with --split-sentences"),
    (["--input", "c.json", "--output-prefix", "nodir/out"], "does not exist"),
])
def test_bad_flags(tmp_path, args, message):
    (tmp_path / "c.json").write_text('{"text": "hello"}\n')
    full = ["--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", bert_uncased_vocab_path()]
    if "--output-prefix" not in args:
        full += ["--output-prefix", "out"]
    result = run_tool(*args, *full, cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_progress_lines(tmp_path, small_corpus, gpt2_files):
    vocab, merges = gpt2_files
    result = run_tool("--input", small_corpus, "--output-prefix", tmp_path / "o", "--tokenizer-type",
                      "GPT2BPETokenizer", "--vocab-file", vocab, "--merge-file", merges, "--log-interval", "10",
                      "--chunk-size", "5")
    progress = [line for line in result.stderr.splitlines() if line.startswith("Processed")]
    assert len(progress) == 4 and "docs/s" in progress[0] and "MiB/s" in progress[0]
    assert "Done: 40 documents" in result.stdout


def test_tokenizer_model_flag_for_huggingface_and_sentencepiece(tmp_path, small_corpus):
    """--tokenizer-model reaches HuggingFaceTokenizer (tokenizer.json) and SentencePieceTokenizer."""
    import sentencepiece

    from megatron.tokenizer import HuggingFaceTokenizer, SentencePieceTokenizer

    hf_json = os.path.join(os.path.dirname(bert_uncased_vocab_path()), "tokenizer.json")
    texts = [json.loads(line)["text"] for line in open(small_corpus, encoding="utf-8")]
    sp_prefix = str(tmp_path / "sp")
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=sp_prefix,
                                             vocab_size=500, minloglevel=2)
    hf = HuggingFaceTokenizer(hf_json)
    sp = SentencePieceTokenizer(sp_prefix + ".model")
    for name, model, tokenizer, eod in [("HuggingFaceTokenizer", hf_json, hf, []),
                                        ("SentencePieceTokenizer", sp_prefix + ".model", sp, [sp.eod])]:
        prefix = tmp_path / name
        run_tool("--input", small_corpus, "--output-prefix", prefix, "--tokenizer-type", name,
                 "--tokenizer-model", model, "--workers", "2", *(["--append-eod"] if eod else []))
        ds = IndexedDataset(f"{prefix}_text_document")
        assert len(ds) == 40
        for d in (0, 21, 39):
            assert ds[d].tolist() == tokenizer.tokenize(texts[d]) + eod
    # tokenizer.json of a BERT model has no end-of-document token: said, not guessed.
    result = run_tool("--input", small_corpus, "--output-prefix", tmp_path / "x", "--tokenizer-type",
                      "HuggingFaceTokenizer", "--tokenizer-model", hf_json, "--append-eod", check=False)
    assert result.returncode == 1
    assert "--append-eod: HuggingFaceTokenizer has no eod token" in result.stderr


def test_json_key_is_nemos_spelling_of_json_keys(tmp_path, small_corpus, gpt2_files):
    """NeMo's documentation spells the flag --json-key; it selects keys exactly as --json-keys does."""
    vocab, merges = gpt2_files
    common = ["--input", small_corpus, "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", vocab,
              "--merge-file", merges, "--workers", "1"]
    run_tool(*common, "--json-key", "title", "--output-prefix", tmp_path / "nemo")
    run_tool(*common, "--json-keys", "title", "--output-prefix", tmp_path / "megatron")
    assert not os.path.exists(tmp_path / "nemo_text_document.bin")
    assert _read_all(str(tmp_path / "nemo_title_document")) == _read_all(str(tmp_path / "megatron_title_document"))


@pytest.mark.parametrize("content,message", [
    (b"", "the input file is empty"),
    (b"no, this is not gzip\n", "cannot read"),
])
def test_empty_or_unreadable_input_is_an_error_naming_the_file(tmp_path, gpt2_files, content, message):
    vocab, merges = gpt2_files
    name = "corpus.json.gz" if b"gzip" in content else "corpus.json"
    (tmp_path / name).write_bytes(content)
    result = run_tool("--input", tmp_path / name, "--output-prefix", tmp_path / "o", "--tokenizer-type",
                      "GPT2BPETokenizer", "--vocab-file", vocab, "--merge-file", merges, check=False)
    assert result.returncode != 0
    assert f"{tmp_path / name}: {message}" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("o_*"))


def test_documents_without_text_are_an_error_not_an_empty_dataset(tmp_path, gpt2_files):
    vocab, merges = gpt2_files
    (tmp_path / "c.json").write_text('{"text": ""}\n{"text": ""}\n')
    result = run_tool("--input", tmp_path / "c.json", "--output-prefix", tmp_path / "o", "--tokenizer-type",
                      "GPT2BPETokenizer", "--vocab-file", vocab, "--merge-file", merges, check=False)
    assert result.returncode != 0 and "nothing was written" in result.stderr
    assert not list(tmp_path.glob("o_*"))


def test_a_full_disk_names_the_output(tmp_path, monkeypatch, small_corpus, gpt2_files):
    """ENOSPC from the writer carries no file name; the message must name the outputs."""
    import errno

    import tools.preprocess_data as tool
    from megatron.core.datasets import indexed_dataset

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(indexed_dataset.IndexedDatasetBuilder, "add_document", full_disk)
    vocab, merges = gpt2_files
    with pytest.raises(tool.PreprocessError, match=r"o_text_document\.bin/\.idx: No space left on device"):
        tool.run(tool.get_args(["--input", small_corpus, "--output-prefix", str(tmp_path / "o"), "--tokenizer-type",
                                "GPT2BPETokenizer", "--vocab-file", vocab, "--merge-file", merges]))
