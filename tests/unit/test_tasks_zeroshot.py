"""The zero-shot GPT task data: WikiText sliding windows, LAMBADA targets, file errors, metrics."""
import json
import math
import os

import numpy as np
import pytest
import torch

from tasks.zeroshot_gpt.datasets import (
    TaskDataError,
    lambada_samples,
    lambada_tokens,
    read_lambada,
    read_wikitext,
    sliding_windows,
    wikitext_samples,
    WikitextData,
)
from tasks.zeroshot_gpt.detokenizer import wikitext_detokenize
from tasks.zeroshot_gpt.evaluate import count_all_targets_correct, masked_loss_sum, wikitext_metrics

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")


def char_tokenize(text):
    """A stand-in tokenizer: one id per character."""
    return [ord(c) for c in text]


@pytest.mark.parametrize("num_tokens,seq_length,stride", [(2, 4, 4), (10, 4, 4), (10, 4, 1), (37, 8, 3),
                                                          (100, 16, 16), (5, 16, 2), (17, 8, 8)])
def test_sliding_windows_count_each_target_once_with_context(num_tokens, seq_length, stride):
    counted = []
    for start, first, end in sliding_windows(num_tokens, seq_length, stride):
        assert end - start <= seq_length
        assert start < first <= end
        if start > 0:
            # After the first window, target j is predicted from tokens start..j-1: at least
            # seq_length - stride + 1 of them.
            assert first - start >= seq_length - stride + 1
        counted.extend(range(first, end + 1))
    assert counted == list(range(1, num_tokens))


def test_sliding_windows_reject_a_stride_outside_the_window():
    with pytest.raises(ValueError, match="--overlapping-eval 9"):
        sliding_windows(20, 8, 9)
    with pytest.raises(ValueError, match="--overlapping-eval 0"):
        sliding_windows(20, 8, 0)


def test_wikitext_samples_mask_only_new_targets():
    data = WikitextData(list(range(100, 120)), num_original_tokens=10)  # 20 tokens, 19 targets
    samples = wikitext_samples(data, seq_length=8, stride=4, pad_id=0)
    total = sum(int(mask.sum()) for _, mask in samples)
    assert total == 19
    tokens, mask = samples[0]
    assert tokens.tolist() == list(range(100, 109)) and mask.tolist() == [1] * 8
    tokens, mask = samples[1]  # window reads tokens 4..11; targets 5..12, only 9..12 are new
    assert tokens.tolist() == list(range(104, 113)) and mask.tolist() == [0] * 4 + [1] * 4
    tokens, mask = samples[-1]
    assert tokens.dtype == np.int64 and mask.shape == (8,)
    # Labels under the mask are the real next tokens, never padding.
    labels = tokens[1:]
    assert all(labels[i] >= 100 for i in range(8) if mask[i])


def test_read_wikitext_counts_raw_words_and_detokenizes(tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_text(" \n = Title = \n \n The city ' s port , built in 1 @,@ 842 , is well @-@ known . \n")
    data = read_wikitext(str(path), char_tokenize)
    stripped = path.read_text().strip()
    assert data.num_original_tokens == len(stripped.split(" "))
    text = "".join(chr(t) for t in data.tokens)
    assert "1,842" in text and "well-known" in text and "port," in text and " ," not in text


def test_detokenizer_rules():
    assert wikitext_detokenize('He said " hello there " and left .') == 'He said "hello there" and left.'
    assert wikitext_detokenize("it does n't ( really ) matter") == "it doesn't (really) matter"
    assert wikitext_detokenize(" = = History = = ") == " == History == "


def test_shipped_wikitext_sample_is_usable():
    data = read_wikitext(os.path.join(DATA, "wikitext_sample.txt"), char_tokenize)
    assert data.num_original_tokens > 100


@pytest.mark.parametrize("content,message", [
    ("", "needs at least two words"),
    ("   \n  \n", "needs at least two words"),
])
def test_read_wikitext_rejects_empty_files(tmp_path, content, message):
    path = tmp_path / "w.txt"
    path.write_text(content)
    with pytest.raises(TaskDataError, match=f"{path}:1: {message}"):
        read_wikitext(str(path), char_tokenize)


def test_read_wikitext_names_a_missing_or_binary_file(tmp_path):
    with pytest.raises(TaskDataError, match="missing.txt: cannot read"):
        read_wikitext(str(tmp_path / "missing.txt"), char_tokenize)
    path = tmp_path / "b.txt"
    path.write_bytes(b"abc \xff\xfe def")
    with pytest.raises(TaskDataError, match="b.txt: not UTF-8"):
        read_wikitext(str(path), char_tokenize)


def test_lambada_targets_strict_and_not():
    text = "the cat sat on the mat"
    context, target = lambada_tokens(text, char_tokenize, strict=False)
    assert context == char_tokenize(text[:-1]) and target == char_tokenize("t")
    context, target = lambada_tokens(text, char_tokenize, strict=True)
    assert context == char_tokenize("the cat sat on the") and target == char_tokenize(" mat")


def test_lambada_samples_mask_the_target_and_keep_it_when_truncating():
    texts = [(1, "a b c d e f g h i j k l m n o p q r s t u v w x y z lastword")]
    tokens, mask = lambada_samples(texts, char_tokenize, seq_length=16, pad_id=0, strict=True)[0]
    labels = tokens[1:]
    target = char_tokenize(" lastword")
    assert labels[mask > 0].tolist() == target
    assert tokens[-1] == ord("d")  # the text ends the window, its start was cut off
    short = lambada_samples([(1, "a bb")], char_tokenize, seq_length=16, pad_id=0, strict=True)[0]
    assert short[0][:4].tolist() == char_tokenize("a bb") and short[1].sum() == 3


def test_lambada_target_longer_than_the_window_fails_with_line(tmp_path):
    with pytest.raises(TaskDataError, match="f.jsonl:7: the last word is 11 tokens"):
        lambada_samples([(7, "a abcdefghij")], char_tokenize, seq_length=8, pad_id=0, strict=True, path="f.jsonl")


@pytest.mark.parametrize("lines,message", [
    (['{"text": "one two"}', "not json"], ":2: not JSON"),
    (['{"txt": "one two"}'], ':1: expected an object with a string "text"'),
    (['["one two"]'], ':1: expected an object'),
    (['{"text": 5}'], ':1: expected an object'),
    (['', '{"text": "alone"}'], ":2: \"text\" needs a context and a last word"),
    ([], ": no examples"),
])
def test_read_lambada_rejects_bad_lines(tmp_path, lines, message):
    path = tmp_path / "l.jsonl"
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    with pytest.raises(TaskDataError, match=f"{path}{message}"):
        read_lambada(str(path))


def test_shipped_lambada_sample_reads():
    texts = read_lambada(os.path.join(DATA, "lambada_sample.jsonl"))
    assert len(texts) == 5 and all(json.dumps(t) for _, t in texts)


def test_count_all_targets_correct_needs_every_target_token():
    labels = torch.tensor([[1, 2, 3], [1, 2, 3], [1, 2, 3], [0, 0, 0]])
    predicted = torch.tensor([[9, 2, 3], [1, 0, 3], [1, 2, 3], [0, 0, 0]])
    logits = torch.nn.functional.one_hot(predicted, 10).float()
    mask = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [0, 0, 0]], dtype=torch.float)
    # Row 0: wrong only outside the mask; row 1: one target wrong; row 2: right; row 3: padding.
    assert count_all_targets_correct(logits, labels, mask).item() == 2


def test_masked_loss_sum_and_metrics():
    loss = torch.tensor([[1.0, 2.0, 4.0]])
    assert masked_loss_sum(loss, torch.tensor([[0.0, 1.0, 1.0]])).item() == 6.0
    metrics = wikitext_metrics(loss_sum=30.0, num_tokenized_tokens=11, num_original_tokens=6)
    assert metrics["avg loss"] == pytest.approx(3.0)
    assert metrics["ppl"] == pytest.approx(math.exp(3.0))
    assert metrics["token ratio"] == pytest.approx(2.0)
    assert metrics["adjusted ppl"] == pytest.approx(math.exp(6.0))
    capped = wikitext_metrics(loss_sum=1000.0, num_tokenized_tokens=11, num_original_tokens=6)
    assert capped["ppl"] == pytest.approx(math.exp(20.0)) and capped["adjusted ppl"] == pytest.approx(math.exp(20.0))
