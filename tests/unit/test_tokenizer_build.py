"""build_tokenizer / vocab_size_with_padding, and the tokenizer.json and SentencePiece tokenizers."""
import json
from types import SimpleNamespace

import pytest

from megatron.tokenizer import (TOKENIZER_TYPES, BertWordPieceLowerCase, GPT2BPETokenizer, HuggingFaceTokenizer,
                                MissingSpecialTokenError, SentencePieceTokenizer, bert_uncased_vocab_path,
                                build_tokenizer, vocab_size_with_padding)

_TEXTS = ["The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs!",
          "How vexingly quick daft zebras jump; 12345 67890.", "Sphinx of black quartz, judge my vow?"] * 20


@pytest.mark.parametrize("size, divisible_by, tp, padded", [
    (30524, 128, 1, 30592), (50257, 128, 1, 50304), (50257, 128, 2, 50432), (256, 128, 1, 256), (1, 1, 1, 1),
    (30524, 8, 3, 30528),
])
def test_vocab_size_with_padding(size, divisible_by, tp, padded):
    args = SimpleNamespace(make_vocab_size_divisible_by=divisible_by, tensor_model_parallel_size=tp)
    assert vocab_size_with_padding(size, args) == padded


def test_padding_defaults_and_errors():
    assert vocab_size_with_padding(30524, SimpleNamespace()) == 30592
    with pytest.raises(ValueError, match="--make-vocab-size-divisible-by 0 must be at least 1"):
        vocab_size_with_padding(10, SimpleNamespace(make_vocab_size_divisible_by=0))


def test_build_bert_sets_padded_size_and_prints_once(capsys):
    args = SimpleNamespace(tokenizer_type="BertWordPieceLowerCase", vocab_file=bert_uncased_vocab_path())
    tokenizer = build_tokenizer(args)
    assert isinstance(tokenizer, BertWordPieceLowerCase)
    assert args.padded_vocab_size == 30592
    assert "> padded vocab (size: 30524) with 68 dummy tokens (new size: 30592)" in capsys.readouterr().out

    quiet = SimpleNamespace(tokenizer_type="BertWordPieceCase", vocab_file=bert_uncased_vocab_path(), rank=1,
                            vocab_extra_ids=100, tensor_model_parallel_size=2)
    assert build_tokenizer(quiet).vocab_size == 30624
    assert quiet.padded_vocab_size == 30720
    assert capsys.readouterr().out == ""


def test_build_gpt2(demo_corpus, tmp_path):
    from tools.train_tokenizer import train_tokenizer

    files = train_tokenizer("GPT2BPETokenizer", [demo_corpus], str(tmp_path), vocab_size=600)
    args = SimpleNamespace(tokenizer_type="GPT2BPETokenizer", **files)
    tokenizer = build_tokenizer(args)
    assert isinstance(tokenizer, GPT2BPETokenizer) and tokenizer.vocab_size == 600
    assert args.padded_vocab_size == 640 and tokenizer.eod == 599


@pytest.mark.parametrize("args, message", [
    (dict(tokenizer_type="GPT2BPETokenizer", vocab_file="v.json"), "^--merge-file is required for GPT2BPETokenizer$"),
    (dict(tokenizer_type="GPT2BPETokenizer"), "^--vocab-file is required for GPT2BPETokenizer$"),
    (dict(tokenizer_type="BertWordPieceCase", vocab_file="/no/such/vocab.txt"),
     "^--vocab-file /no/such/vocab.txt: no such file$"),
    (dict(tokenizer_type="HuggingFaceTokenizer"), "^--tokenizer-model is required for HuggingFaceTokenizer$"),
    (dict(tokenizer_type="SentencePieceTokenizer"), "^--tokenizer-model is required for SentencePieceTokenizer$"),
    (dict(tokenizer_type="Unknown"), "^--tokenizer-type Unknown is not one of BertWordPieceLowerCase, "),
])
def test_build_errors_name_the_flag(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "v.json").write_text("{}")
    with pytest.raises(ValueError, match=message):
        build_tokenizer(SimpleNamespace(**args))


def test_tokenizer_types_are_argparse_choices():
    assert TOKENIZER_TYPES[:3] == ("BertWordPieceLowerCase", "BertWordPieceCase", "GPT2BPETokenizer")
    assert {"HuggingFaceTokenizer", "SentencePieceTokenizer"} <= set(TOKENIZER_TYPES)


def test_bert_uncased_vocab_path_is_the_real_vocab():
    with open(bert_uncased_vocab_path(), encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[0] == "[PAD]" and lines[101:104] == ["[CLS]", "[SEP]", "[MASK]"] and len(lines) - 1 == 30522


def _save_wordpiece_json(directory):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(_TEXTS, trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    directory.mkdir(exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return tok


def test_huggingface_tokenizer(tmp_path):
    reference = _save_wordpiece_json(tmp_path / "hf")
    args = SimpleNamespace(tokenizer_type="HuggingFaceTokenizer", tokenizer_model=str(tmp_path / "hf"))
    tokenizer = build_tokenizer(args)
    assert isinstance(tokenizer, HuggingFaceTokenizer)
    assert tokenizer.vocab_size == reference.get_vocab_size() and args.padded_vocab_size == 256
    assert (tokenizer.pad, tokenizer.cls, tokenizer.sep, tokenizer.mask) == (0, 2, 3, 4)
    for role in ("bos", "eos", "eod"):
        with pytest.raises(MissingSpecialTokenError, match=f"^HuggingFaceTokenizer has no {role} token$"):
            getattr(tokenizer, role)
    ids = tokenizer.tokenize("the quick fox")
    assert ids == reference.encode("the quick fox").ids and ids[0] == 2 and ids[-1] == 3
    assert tokenizer.tokenize_batch(["a b", "the"]) == [reference.encode("a b").ids, reference.encode("the").ids]
    assert tokenizer.detokenize(ids) == reference.decode(ids, skip_special_tokens=False)
    assert HuggingFaceTokenizer(tmp_path / "hf" / "tokenizer.json", add_special_tokens=False).tokenize("the")[0] != 2

    (tmp_path / "hf" / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": "[SEP]"}}))
    assert HuggingFaceTokenizer(str(tmp_path / "hf")).eod == 3
    (tmp_path / "hf" / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<nope>"}))
    with pytest.raises(ValueError, match="bos_token '<nope>' is not in the tokenizer's vocabulary"):
        HuggingFaceTokenizer(str(tmp_path / "hf"))
    with pytest.raises(ValueError, match="no tokenizer.json there"):
        HuggingFaceTokenizer(str(tmp_path))


def test_sentencepiece_tokenizer(tmp_path):
    import sentencepiece

    prefix = str(tmp_path / "sp")
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(_TEXTS), model_prefix=prefix, vocab_size=60,
                                             minloglevel=2)
    args = SimpleNamespace(tokenizer_type="SentencePieceTokenizer", tokenizer_model=prefix + ".model")
    tokenizer = build_tokenizer(args)
    assert isinstance(tokenizer, SentencePieceTokenizer)
    assert tokenizer.vocab_size == 60 and args.padded_vocab_size == 128
    assert (tokenizer.bos, tokenizer.eos, tokenizer.eod) == (1, 2, 2)
    with pytest.raises(MissingSpecialTokenError, match="^SentencePieceTokenizer has no pad token"):
        tokenizer.pad
    text = "the lazy dog jumps"
    ids = tokenizer.tokenize(text)
    assert ids and tokenizer.detokenize(ids) == text
    assert tokenizer.tokenize_batch([text, ""]) == [ids, []]
    assert tokenizer.inv_vocab[tokenizer.vocab["<unk>"]] == "<unk>"
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        SentencePieceTokenizer(str(bad))
