"""End to end: preprocess the demo corpus with the real CLI and tokenizers, then iterate
every dataset type for a few hundred samples, checking shapes, special tokens and masks."""
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron.core.datasets.builders import DatasetConfig, build_train_valid_test_datasets
from megatron.core.datasets.samplers import build_pretraining_data_loader
from megatron.tokenizer import BertWordPieceLowerCase, GPT2BPETokenizer, bert_uncased_vocab_path

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_SAMPLES = 300


def _preprocess(*args):
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), *args,
                    "--workers", "1"], check=True, cwd=REPO, capture_output=True, text=True)


@pytest.fixture(scope="module")
def bert_data(demo_corpus, tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("bert_demo") / "demo")
    _preprocess("--input", demo_corpus, "--json-keys", "text", "title", "--split-sentences",
                "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", bert_uncased_vocab_path(),
                "--output-prefix", prefix)
    return prefix


@pytest.fixture(scope="module")
def bert_tokenizer():
    return BertWordPieceLowerCase(bert_uncased_vocab_path(), vocab_extra_ids=100)


def _check_bert(sample, tokenizer, seq_length):
    n = int(sample["padding_mask"].sum())
    assert sample["text"].shape == (seq_length,) and sample["text"][0] == tokenizer.cls
    text = sample["text"].copy()
    masked = sample["loss_mask"] == 1
    text[masked] = sample["labels"][masked]
    assert text[n - 1] == tokenizer.sep and (text[:n] == tokenizer.sep).sum() == 2
    assert (sample["text"][n:] == tokenizer.pad).all()
    return n, masked


def test_bert_over_demo_corpus(bert_data, bert_tokenizer):
    config = DatasetConfig("bert", seq_length=128, seed=1234, split="900,80,20")
    train, valid, test = build_train_valid_test_datasets(
        config, [NUM_SAMPLES, 64, 16], bert_tokenizer, data_path=[bert_data + "_text_sentence"])
    masked_total = tokens_total = mask_token = unchanged = 0
    loader = build_pretraining_data_loader(train, 0, 25, 0, 1, num_workers=0)
    seen = 0
    for batch in loader:
        for i in range(batch["text"].shape[0]):
            sample = {k: v[i].numpy() for k, v in batch.items()}
            n, masked = _check_bert(sample, bert_tokenizer, 128)
            text = sample["text"]
            original = text.copy()
            original[masked] = sample["labels"][masked]
            tokens_total += n
            masked_total += int(masked.sum())
            mask_token += int((text[masked] == bert_tokenizer.mask).sum())
            unchanged += int((text[masked] == original[masked]).sum())
        seen += batch["text"].shape[0]
        if seen >= NUM_SAMPLES:
            break
    assert seen == NUM_SAMPLES
    assert 0.13 < masked_total / tokens_total < 0.16
    assert abs(mask_token / masked_total - 0.8) < 0.04
    assert abs(unchanged / masked_total - 0.1) < 0.04
    for dataset in (valid, test):
        for i in range(min(len(dataset), 50)):
            _check_bert(dataset[i], bert_tokenizer, 128)


def test_t5_over_demo_corpus(bert_data, bert_tokenizer):
    config = DatasetConfig("t5", seq_length=256, decoder_seq_length=128, seed=1234)
    train, _, _ = build_train_valid_test_datasets(
        config, [NUM_SAMPLES, 0, 0], bert_tokenizer, data_path=[bert_data + "_text_sentence"])
    sentinels = set(bert_tokenizer.additional_special_tokens_ids)
    for i in range(NUM_SAMPLES):
        sample = train[i]
        assert sample["text_enc"].shape == (256,) and sample["text_dec"].shape == (128,)
        assert sample["text_dec"][0] == bert_tokenizer.bos
        labels = sample["labels"][sample["loss_mask"] == 1]
        assert labels[-1] == bert_tokenizer.eos
        enc_sentinels = [t for t in sample["text_enc"].tolist() if t in sentinels]
        dec_sentinels = [t for t in labels.tolist() if t in sentinels]
        assert enc_sentinels == dec_sentinels == bert_tokenizer.additional_special_tokens_ids[:len(enc_sentinels)]
        assert sample["dec_mask"].shape == (128, 128) and sample["enc_dec_mask"].shape == (128, 256)


def test_ict_over_demo_corpus(bert_data, bert_tokenizer):
    config = DatasetConfig("ict", seq_length=128, seed=1234, split="100,0,0",
                           titles_data_path=bert_data + "_title_sentence")
    train, _, _ = build_train_valid_test_datasets(
        config, [NUM_SAMPLES, 0, 0], bert_tokenizer, data_path=[bert_data + "_text_sentence"])
    for i in range(NUM_SAMPLES):
        sample = train[i]
        query = sample["query_tokens"][sample["query_pad_mask"] == 1]
        context = sample["context_tokens"][sample["context_pad_mask"] == 1]
        assert query[0] == context[0] == bert_tokenizer.cls
        assert query[-1] == context[-1] == bert_tokenizer.sep
        assert (context == bert_tokenizer.sep).sum() == 2
        assert sample["context_mask"].shape == (128, 128)


def test_gpt_over_demo_corpus(demo_corpus, tmp_path):
    from tools.train_tokenizer import train_tokenizer

    files = train_tokenizer("GPT2BPETokenizer", demo_corpus, str(tmp_path / "tok"), 2000)
    prefix = str(tmp_path / "gpt")
    _preprocess("--input", demo_corpus, "--json-keys", "text", "--tokenizer-type", "GPT2BPETokenizer",
                "--vocab-file", files["vocab_file"], "--merge-file", files["merge_file"],
                "--append-eod", "--output-prefix", prefix)
    tokenizer = GPT2BPETokenizer(files["vocab_file"], files["merge_file"])
    config = DatasetConfig("gpt", seq_length=256, seed=1234)
    train, valid, _ = build_train_valid_test_datasets(
        config, [NUM_SAMPLES, 32, 0], data_path=[prefix + "_text_document"])
    eod_seen = 0
    for i in range(NUM_SAMPLES):
        text = train[i]["text"]
        assert text.shape == (257,) and text.dtype == np.int64
        assert 0 <= text.min() and text.max() < tokenizer.vocab_size
        eod_seen += int((text == tokenizer.eod).sum())
    assert eod_seen > 0, "documents end with the end-of-document token"
    assert len(valid) >= 32
    # The same corpus blended with itself at 1:3 is a valid --data-path of two entries.
    blend, _, _ = build_train_valid_test_datasets(
        DatasetConfig("gpt", seq_length=128, seed=7), [NUM_SAMPLES, 0, 0],
        data_path=["1", prefix + "_text_document", "3", prefix + "_text_document"])
    assert len(blend) == NUM_SAMPLES
    assert abs(int((blend.dataset_index == 0).sum()) - NUM_SAMPLES // 4) <= 1
    assert all(blend[i]["text"].shape == (129,) for i in range(NUM_SAMPLES))
