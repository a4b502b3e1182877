"""BERT WordPiece: token-for-token equality with the reference, Megatron's added ids, errors."""
import unicodedata

import pytest

from megatron.tokenizer import (BertWordPieceCase, BertWordPieceLowerCase, MissingSpecialTokenError,
                                bert_uncased_vocab_path)
from test_tokenizer_common import varied_lines
from tools.train_tokenizer import train_tokenizer


class _UnicodedataWithoutNFC:
    """unicodedata, except that NFC is the identity.

    transformers' BasicTokenizer NFC-normalizes its input; Google's original, which
    Megatron-LM ships, does not (so "e" + U+0301 stays two characters in the cased model).
    """

    def __getattr__(self, name):
        return getattr(unicodedata, name)

    @staticmethod
    def normalize(form, text):
        return text if form == "NFC" else unicodedata.normalize(form, text)


def _reference(vocab_file, lower_case, monkeypatch):
    """transformers' slow BertTokenizer set up as Megatron's BertWordPiece{LowerCase,Case}.

    Its ``_tokenize`` (basic + WordPiece) is the reference: the public ``tokenize`` first
    lower-cases the text one character at a time (to protect special tokens), which loses
    Python's final-sigma rule that Google's per-word ``lower()`` applies.
    """
    import transformers.models.bert.tokenization_bert as tokenization_bert

    monkeypatch.setattr(tokenization_bert, "unicodedata", _UnicodedataWithoutNFC())
    ref = tokenization_bert.BertTokenizer(vocab_file, do_lower_case=lower_case, strip_accents=lower_case,
                                          split_special_tokens=True)
    ref.wordpiece_tokenizer.max_input_chars_per_word = 200
    return lambda text: ref.convert_tokens_to_ids(ref._tokenize(text, split_special_tokens=True))


@pytest.fixture(scope="module")
def cased_vocab(demo_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("bert_cased")
    return train_tokenizer("BertWordPieceCase", [demo_corpus], str(out), vocab_size=3000)["vocab_file"]


@pytest.fixture(scope="module")
def lines():
    return varied_lines()


def test_uncased_equals_reference(lines, monkeypatch):
    vocab_file = bert_uncased_vocab_path()
    reference = _reference(vocab_file, True, monkeypatch)
    tokenizer = BertWordPieceLowerCase(vocab_file)
    mismatches = [line for line in lines if tokenizer.tokenize(line) != reference(line)]
    assert mismatches == []
    assert tokenizer.tokenize_batch(lines[:200]) == [reference(line) for line in lines[:200]]


def test_cased_equals_reference(lines, cased_vocab, monkeypatch):
    reference = _reference(cased_vocab, False, monkeypatch)
    tokenizer = BertWordPieceCase(cased_vocab)
    mismatches = [line for line in lines if tokenizer.tokenize(line) != reference(line)]
    assert mismatches == []


def test_known_uncased_tokens():
    tokenizer = BertWordPieceLowerCase(bert_uncased_vocab_path())
    pieces = lambda text: [tokenizer.inv_vocab[i] for i in tokenizer.tokenize(text)]
    assert pieces("Hello, World!") == ["hello", ",", "world", "!"]
    assert pieces("naïve CAFÉ") == ["naive", "cafe"]
    assert pieces("unaffable") == ["una", "##ffa", "##ble"]  # greedy longest match
    # Special-token spellings in text are plain text, as in Megatron's tokenizer.
    assert pieces("[CLS]") == ["[", "cl", "##s", "]"]
    # Final sigma: Python lower-cases a word-final capital sigma to ς.
    assert pieces("ΟΔΟΣ")[-1] == "##ος"
    assert pieces("a" * 200) != ["[UNK]"] and pieces("a" * 201) == ["[UNK]"]
    assert pieces("中文") == ["中", "文"]
    assert tokenizer.tokenize("\x00\ufffd\x07") == []


def test_megatron_added_tokens_and_special_ids():
    vocab_file = bert_uncased_vocab_path()
    tokenizer = BertWordPieceLowerCase(vocab_file)
    assert tokenizer.vocab_size == 30524
    assert (tokenizer.pad, tokenizer.cls, tokenizer.sep, tokenizer.mask) == (0, 101, 102, 103)
    assert (tokenizer.bos, tokenizer.eos) == (30522, 30523)
    assert tokenizer.inv_vocab[30522] == "[BOS]" and tokenizer.vocab["[EOS]"] == 30523
    assert tokenizer.additional_special_tokens_ids == []
    with pytest.raises(MissingSpecialTokenError, match="^BertWordPieceLowerCase has no eod token$"):
        tokenizer.eod

    t5 = BertWordPieceCase(vocab_file, vocab_extra_ids=100)
    assert t5.vocab_size == 30624
    assert t5.additional_special_tokens_ids == list(range(30524, 30624))
    assert t5.inv_vocab[30524] == "<extra_id_0>" and t5.inv_vocab[30623] == "<extra_id_99>"
    with pytest.raises(MissingSpecialTokenError, match="BertWordPieceCase has no eod token"):
        t5.eod


def test_added_token_already_in_vocab_keeps_its_id(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[EOS]", "a", "##b"]) + "\n")
    tokenizer = BertWordPieceCase(str(vocab))
    assert tokenizer.eos == 5 and tokenizer.bos == 8 and tokenizer.vocab_size == 9
    assert tokenizer.tokenize("ab a c") == [6, 7, 6, 1]


def test_detokenize_joins_continuations():
    tokenizer = BertWordPieceLowerCase(bert_uncased_vocab_path())
    assert tokenizer.detokenize(tokenizer.tokenize("Unaffable people, here.")) == "unaffable people , here ."
    with pytest.raises(ValueError, match="token id 99999 is not in the vocabulary of 30524"):
        tokenizer.detokenize([99999])


def test_vocab_file_errors(tmp_path):
    with pytest.raises(ValueError, match=r"^--vocab-file .*missing\.txt: cannot read"):
        BertWordPieceLowerCase(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_text("[PAD]\n[UNK]\nx\n")
    with pytest.raises(ValueError, match=r"lacks the BERT token\(s\) \[CLS\] \[SEP\] \[MASK\]"):
        BertWordPieceLowerCase(str(bad))
    dup = tmp_path / "dup.txt"
    dup.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nx\nx\n")
    with pytest.raises(ValueError, match=r"dup\.txt:7: duplicate token 'x' \(first at line 6\)"):
        BertWordPieceLowerCase(str(dup))
