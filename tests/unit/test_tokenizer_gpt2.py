"""GPT-2 BPE: both engines equal the reference token for token; the tiktoken check and fallback."""
import json

import pytest

from megatron.tokenizer import GPT2BPETokenizer, MissingSpecialTokenError
from megatron.tokenizer.gpt2 import bytes_to_unicode, check_tiktoken_equivalence
from test_tokenizer_common import varied_lines
from tools.train_tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def bpe_files(demo_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpt2_bpe")
    files = train_tokenizer("GPT2BPETokenizer", [demo_corpus], str(out), vocab_size=3000)
    return files["vocab_file"], files["merge_file"]


@pytest.fixture(scope="module")
def reference(bpe_files):
    """transformers' slow GPT2Tokenizer (OpenAI's algorithm); ``_tokenize`` skips its
    special-token splitting, so "<|endoftext|>" in text stays literal, as in Megatron."""
    from transformers import GPT2Tokenizer

    ref = GPT2Tokenizer(*bpe_files)
    return lambda text: ref.convert_tokens_to_ids(ref._tokenize(text))


@pytest.fixture(scope="module")
def lines():
    return [line for line in varied_lines() if not any(0xD800 <= ord(c) <= 0xDFFF for c in line)]


@pytest.mark.parametrize("engine", ["tiktoken", "tokenizers"])
def test_equals_reference_and_round_trips(engine, bpe_files, reference, lines):
    tokenizer = GPT2BPETokenizer(*bpe_files, engine=engine)
    assert tokenizer.engine == engine
    assert [line for line in lines if tokenizer.tokenize(line) != reference(line)] == []
    assert [line for line in lines if tokenizer.detokenize(tokenizer.tokenize(line)) != line] == []
    assert tokenizer.tokenize_batch(lines[:100]) == [reference(line) for line in lines[:100]]


def test_trained_files_take_the_tiktoken_path(bpe_files):
    tokenizer = GPT2BPETokenizer(*bpe_files)
    assert tokenizer.engine == "tiktoken"
    assert tokenizer.vocab_size == 3000
    assert tokenizer.eod == 2999 and tokenizer.inv_vocab[2999] == "<|endoftext|>"
    # Literal text, never the end-of-document id.
    assert tokenizer.eod not in tokenizer.tokenize("a<|endoftext|>b")
    assert tokenizer.detokenize([tokenizer.eod]) == "<|endoftext|>"
    for role in ("cls", "sep", "pad", "mask", "bos", "eos"):
        with pytest.raises(MissingSpecialTokenError, match=f"^GPT2BPETokenizer has no {role} token$"):
            getattr(tokenizer, role)


def test_ids_not_in_merge_order_use_a_lookup(bpe_files, reference, lines, tmp_path):
    vocab_file, merge_file = bpe_files
    with open(vocab_file, encoding="utf-8") as f:
        vocab = json.load(f)
    # Reverse the ids of all merge results: the file stays valid GPT-2 but ids fall in merge order.
    merged = sorted((i for t, i in vocab.items() if i >= 256 and t != "<|endoftext|>"))
    remap = dict(zip(merged, reversed(merged)))
    shuffled = {t: remap.get(i, i) for t, i in vocab.items()}
    (tmp_path / "vocab.json").write_text(json.dumps(shuffled), encoding="utf-8")
    tokenizer = GPT2BPETokenizer(str(tmp_path / "vocab.json"), merge_file, engine="tiktoken")
    for line in lines[:400]:
        assert tokenizer.tokenize(line) == [remap.get(i, i) for i in reference(line)]
        assert tokenizer.detokenize(tokenizer.tokenize(line)) == line


def _write_bpe(tmp_path, merges, extra_tokens=()):
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [a + b for a, b in merges] + list(extra_tokens) + ["<|endoftext|>"]
    vocab = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")


def test_merges_where_tiktoken_differs_fall_back(tmp_path, capsys):
    from transformers import GPT2Tokenizer

    # "xyz": real BPE merges y+z first and stops at [x, yz]; by concatenation ranks
    # tiktoken would go on to the single token "xyz".
    files = _write_bpe(tmp_path, [("y", "z"), ("x", "y"), ("xy", "z")])
    with pytest.raises(ValueError, match="cannot use tiktoken: BPE of merge 2's result 'xyz'"):
        GPT2BPETokenizer(*files, engine="tiktoken")
    tokenizer = GPT2BPETokenizer(*files)
    assert tokenizer.engine == "tokenizers"
    assert "using the tokenizers engine" in capsys.readouterr().err
    GPT2BPETokenizer(*files)
    assert capsys.readouterr().err == ""  # the notice is given once per file pair
    ref = GPT2Tokenizer(*files)
    for text in ["xyz", "xy z", "xxyz yzxy", "zyx xyzxyz", "x y z"]:
        assert tokenizer.tokenize(text) == ref.convert_tokens_to_ids(ref._tokenize(text))
    vocab = tokenizer.vocab
    assert tokenizer.tokenize("xyz") == [vocab["x"], vocab["yz"]]


def test_equivalence_checks_name_the_problem():
    byte_decoder = {ch: b for b, ch in bytes_to_unicode().items()}
    vocab = {ch: i for i, ch in enumerate(byte_decoder)}
    vocab.update({"ab": 256, "abc": 257})
    assert check_tiktoken_equivalence(vocab, [("a", "b"), ("ab", "c")], byte_decoder) is None
    assert "produces 'ab' a second time" in check_tiktoken_equivalence(vocab, [("a", "b"), ("a", "b")], byte_decoder)
    assert "uses 'ab' before" in check_tiktoken_equivalence(vocab, [("ab", "c"), ("a", "b")], byte_decoder)
    assert "which vocab.json lacks" in check_tiktoken_equivalence(vocab, [("a", "b"), ("b", "c")], byte_decoder)
    del vocab["a"]
    assert "'a' is missing from vocab.json" in check_tiktoken_equivalence(vocab, [], byte_decoder)


def test_file_errors(bpe_files, tmp_path):
    vocab_file, merge_file = bpe_files
    with pytest.raises(ValueError, match=r"^--vocab-file .*nope\.json: cannot read"):
        GPT2BPETokenizer(str(tmp_path / "nope.json"), merge_file)
    with pytest.raises(ValueError, match=r"^--merge-file .*nope\.txt: cannot read"):
        GPT2BPETokenizer(vocab_file, str(tmp_path / "nope.txt"))
    bad_merges = tmp_path / "merges.txt"
    bad_merges.write_text("#version: 0.2\na b\nc d e\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges\.txt:3: expected two space-separated tokens"):
        GPT2BPETokenizer(vocab_file, str(bad_merges))
    bad_vocab = tmp_path / "vocab.json"
    bad_vocab.write_text('["not", "a", "dict"]', encoding="utf-8")
    with pytest.raises(ValueError, match="expected a non-empty JSON object"):
        GPT2BPETokenizer(str(bad_vocab), merge_file)
    tokenizer = GPT2BPETokenizer(vocab_file, merge_file)
    for bad_id in (123456, -1):
        with pytest.raises(ValueError, match=f"token id {bad_id} is not in the vocabulary of 3000"):
            tokenizer.detokenize([1, bad_id])


def test_regex_module_split_path_equals_reference(bpe_files, reference, lines):
    # The path taken for texts with characters tiktoken's regex tables may not know; forcing
    # it for every non-ASCII text must change nothing.
    tokenizer = GPT2BPETokenizer(*bpe_files, engine="tiktoken")
    tokenizer._cn_routing = False
    non_ascii = [line for line in lines if not line.isascii()]
    assert len(non_ascii) > 500
    assert [line for line in non_ascii if tokenizer.tokenize(line) != reference(line)] == []


def test_vocab_missing_a_byte_falls_back_and_fails_loudly(tmp_path):
    files = _write_bpe(tmp_path, [("a", "b")])
    with open(files[0], encoding="utf-8") as f:
        vocab = json.load(f)
    del vocab["~"]
    with open(files[0], "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    tokenizer = GPT2BPETokenizer(*files)
    assert tokenizer.engine == "tokenizers"
    assert tokenizer.tokenize("ab a") == [vocab["ab"], vocab["Ġ"], vocab["a"]]
    with pytest.raises(ValueError, match="vocab.json has no token for a byte of b'~'"):
        tokenizer.tokenize("a~")


@pytest.mark.slow
def test_tiktoken_regex_disagrees_only_on_unassigned_characters():
    """The premise of the fast path, over every code point: wherever tiktoken's regex and the
    ``regex`` module split "a"/"1"/"!"/" " + X differently, X is unassigned for unicodedata."""
    import unicodedata

    import regex
    import tiktoken

    from megatron.tokenizer.gpt2 import GPT2_SPLIT_PATTERN, tiktoken_unicode_version

    if tuple(int(x) for x in unicodedata.unidata_version.split(".")[:2]) > tiktoken_unicode_version():
        pytest.skip("unicodedata is newer than tiktoken's tables: the fast path is not used for non-ASCII")
    split = regex.compile(GPT2_SPLIT_PATTERN)
    prefixes = ("a", "1", "!", " ")
    disagreeing_assigned = []
    for start in range(0, 0x110000, 0x10000):
        chars = [chr(cp) for cp in range(start, start + 0x10000) if not 0xD800 <= cp <= 0xDFFF]
        ranks = {bytes([b]): b for b in range(256)}
        for ch in chars:
            encoded = ch.encode("utf-8")
            for end in range(2, len(encoded) + 1):
                ranks.setdefault(encoded[:end], len(ranks))
            for prefix in prefixes:
                ranks.setdefault(prefix.encode() + encoded, len(ranks))
        probe = tiktoken.Encoding(f"probe-{start}", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                                  special_tokens={})
        for ch in chars:
            for prefix in prefixes:
                one_piece_tiktoken = len(probe.encode_ordinary(prefix + ch)) == 1
                one_piece_regex = len(split.findall(prefix + ch)) == 1
                if one_piece_tiktoken != one_piece_regex and unicodedata.category(ch) != "Cn":
                    disagreeing_assigned.append(hex(ord(ch)))
    assert disagreeing_assigned == []
