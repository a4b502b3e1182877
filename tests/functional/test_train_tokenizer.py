"""tools/train_tokenizer.py end to end: the CLI, the file formats, and its input errors."""
import json
import os
import subprocess
import sys

import pytest

from megatron.tokenizer import BertWordPieceCase, BertWordPieceLowerCase, GPT2BPETokenizer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO_ROOT, "tools", "train_tokenizer.py")


def _run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, cwd=REPO_ROOT)


def test_gpt2_bpe_files_in_gpt2_format(demo_corpus, tmp_path):
    result = _run("--input", demo_corpus, "--tokenizer-type", "GPT2BPETokenizer", "--vocab-size", "1000",
                  "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["--vocab-file", str(tmp_path / "vocab.json"),
                                     "--merge-file", str(tmp_path / "merges.txt")]
    with open(tmp_path / "merges.txt", encoding="utf-8") as f:
        merges_text = f.read()
    assert merges_text.startswith("#version: 0.2\n") and merges_text.endswith("\n")
    merges = merges_text.split("\n")[1:-1]
    assert all(len(line.split(" ")) == 2 for line in merges)
    with open(tmp_path / "vocab.json", encoding="utf-8") as f:
        vocab = json.load(f)
    assert len(vocab) == 1000 == 256 + len(merges) + 1
    assert vocab["<|endoftext|>"] == 999 and sorted(vocab.values()) == list(range(1000))
    assert sorted(os.listdir(tmp_path)) == ["merges.txt", "vocab.json"]  # no temporary files left
    tokenizer = GPT2BPETokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    assert tokenizer.engine == "tiktoken"
    text = "def tokenize(self, text):\n    return self.encode(text)  # naïve ☃"
    assert tokenizer.detokenize(tokenizer.tokenize(text)) == text


@pytest.mark.parametrize("tokenizer_type, cls", [("BertWordPieceLowerCase", BertWordPieceLowerCase),
                                                 ("BertWordPieceCase", BertWordPieceCase)])
def test_wordpiece_vocab_in_bert_format(tokenizer_type, cls, demo_corpus, tmp_path):
    result = _run("--input", demo_corpus, "--tokenizer-type", tokenizer_type, "--vocab-size", "2000",
                  "--output-dir", str(tmp_path), "--min-frequency", "3")
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "vocab.txt", encoding="utf-8") as f:
        tokens = f.read().split("\n")
    assert tokens[-1] == "" and tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(tokens) - 1 <= 2000 and any(t.startswith("##") for t in tokens)
    assert any(t != t.lower() for t in tokens[5:]) == (tokenizer_type == "BertWordPieceCase")
    tokenizer = cls(str(tmp_path / "vocab.txt"))
    assert tokenizer.pad == 0 and tokenizer.vocab_size == len(tokens) - 1 + 2
    assert tokenizer.tokenize("The function returns") != []


def test_bad_input_names_file_and_line(tmp_path):
    corpus = tmp_path / "corpus.json"
    corpus.write_text('{"text": "fine"}\n\n{"text": "also fine"}\n{"text": 3}\n', encoding="utf-8")
    result = _run("--input", str(corpus), "--tokenizer-type", "GPT2BPETokenizer", "--vocab-size", "300",
                  "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {corpus}:4: key 'text' holds int, not a string"
    assert not (tmp_path / "out" / "vocab.json").exists()

    corpus.write_text('{"text": "fine"}\nnot json\n', encoding="utf-8")
    result = _run("--input", str(corpus), "--tokenizer-type", "BertWordPieceCase", "--vocab-size", "300",
                  "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 1 and f"{corpus}:2: invalid JSON" in result.stderr
    assert "Traceback" not in result.stderr

    corpus.write_text('{"body": "x"}\n', encoding="utf-8")
    result = _run("--input", str(corpus), "--tokenizer-type", "BertWordPieceCase", "--vocab-size", "300",
                  "--output-dir", str(tmp_path / "out"))
    assert f"{corpus}:1: missing key 'text' (--json-keys)" in result.stderr


def test_argument_errors(tmp_path):
    from tools.train_tokenizer import train_tokenizer

    with pytest.raises(ValueError, match="--vocab-size 100 is below the minimum 258 for GPT2BPETokenizer"):
        train_tokenizer("GPT2BPETokenizer", [str(tmp_path)], str(tmp_path), vocab_size=100)
    with pytest.raises(ValueError, match=r"--input .*missing\.json: no such file"):
        train_tokenizer("BertWordPieceCase", [str(tmp_path / "missing.json")], str(tmp_path), vocab_size=100)
    with pytest.raises(ValueError, match="--tokenizer-type HuggingFaceTokenizer cannot be trained"):
        train_tokenizer("HuggingFaceTokenizer", [str(tmp_path)], str(tmp_path), vocab_size=100)
