"""Sentence splitting: the fast Punkt engine equals NLTK's; the offline fallback trains and caches."""
import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megatron.preprocessing.sentence_splitter import (
    MAX_PUNKT_CHARS, IdentitySplitter, SentenceSplitter, _import_punkt, load_or_train_punkt,
    train_punkt_parameters)


@pytest.fixture(scope="module")
def corpus_texts(demo_corpus):
    with open(demo_corpus, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


@pytest.fixture(scope="module")
def trained_params(corpus_texts):
    return train_punkt_parameters(_import_punkt(), "\n\n".join(corpus_texts)[:1_000_000])


def test_punkt_import_is_light_and_leaves_nltk_importable():
    # NLTK's package __init__ imports SciPy (over a second); the splitter must not.
    code = ("import sys; from megatron.preprocessing.sentence_splitter import _import_punkt; "
            "_import_punkt(); assert 'scipy' not in sys.modules, 'scipy imported'; "
            "import nltk; assert hasattr(nltk, 'download') and hasattr(nltk, 'sent_tokenize')")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fast_engine_equals_nltk_on_the_demo_corpus(corpus_texts, trained_params):
    fast = SentenceSplitter(trained_params)
    reference = SentenceSplitter(trained_params, engine="nltk")
    for text in corpus_texts:
        assert fast.split(text) == reference.split(text)


_ADVERSARIAL = [
    "Dr. Smith went to Washington. He arrived at 5 p.m. on Jan. 3. It rained!",
    "(Sent one.) Sent two? \"Quoted sentence.\" Next one... and more... Then the end.",
    "J. S. Bach wrote it. A. Another letter. e.g. this, i.e. that. etc. Done.",
    "Numbers: 1. first 2. second 3.5 is a number. 10. Tenth item.",
    ". . . leading dots. !!! Bang!!! Really?! Yes.", "No boundary at all", "", "   ", ".\n.\n",
    "Line one.\nLine two.\n\nParagraph. «Guillemets.» ‘Quote.’ “Double.” End.",
    "Ünïcödé sentence. Ça marche. 日本語の文。 Another one. Émile arrived.",
    "U.S.A. is big. The U.N. met. Mr.Smith? Mrs. Jones!",
]

_alphabet = st.sampled_from(list("abcXYZ .?!,;:'\"()[]{}-\n\t0123456789") + ["e.g.", "Dr.", " The ", "...", "»"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_alphabet, max_size=60).map("".join))
def test_fast_engine_equals_nltk_on_random_text(trained_params, text):
    fast = SentenceSplitter(trained_params)
    reference = SentenceSplitter(trained_params, engine="nltk")
    assert fast.split(text) == reference.split(text)


def test_fast_engine_equals_nltk_on_adversarial_text(trained_params):
    empty_params = _import_punkt().PunktParameters()
    for params in (trained_params, empty_params):
        fast, reference = SentenceSplitter(params), SentenceSplitter(params, engine="nltk")
        for text in _ADVERSARIAL:
            assert fast.split(text) == reference.split(text), text


def test_keep_newlines_preserves_the_text(trained_params):
    text = "First sentence.\nSecond sentence here.\n\nThird one, after a blank line.  "
    sentences = SentenceSplitter(trained_params, keep_newlines=True).split(text)
    assert len(sentences) == 3
    assert "".join(sentences) == text
    assert SentenceSplitter(trained_params).split(text)[0] == "First sentence."


def test_long_text_is_split_in_chunks_without_breaking_words(trained_params):
    sentence = "This is a reasonably long sentence about nothing in particular. "
    text = sentence * (MAX_PUNKT_CHARS // len(sentence) + 50)
    sentences = SentenceSplitter(trained_params).split(text)
    assert len(sentences) == MAX_PUNKT_CHARS // len(sentence) + 50
    assert set(sentences) == {sentence.strip()}


def test_identity_splitter():
    assert IdentitySplitter().split("One. Two.") == ["One. Two."]


def test_offline_fallback_trains_once_then_uses_the_cache(tmp_path, corpus_texts):
    cache = str(tmp_path / "out_punkt_english.json")
    sample = "\n\n".join(corpus_texts[:50])
    messages = []
    params, source = load_or_train_punkt("english", lambda: sample, cache, log=messages.append)
    if source.startswith("NLTK punkt data"):
        pytest.skip("NLTK's trained punkt data is installed here; the fallback is not used")
    assert len(messages) == 1 and "training a Punkt model" in messages[0]
    assert os.path.exists(cache)
    cached, source = load_or_train_punkt("english", lambda: sample, cache, log=messages.append)
    assert source.startswith("cached") and len(messages) == 1
    assert cached.abbrev_types == params.abbrev_types
    assert cached.sent_starters == params.sent_starters
    assert cached.collocations == params.collocations
    assert dict(cached.ortho_context) == dict(params.ortho_context)
    # Different input text: the cache no longer fits and the model is trained again.
    load_or_train_punkt("english", lambda: sample + " More text.", cache, log=messages.append)
    assert len(messages) == 2


def test_splitter_pickles_for_worker_processes(trained_params):
    import pickle

    splitter = SentenceSplitter(trained_params, keep_newlines=True)
    splitter.split("Warm up. The cache.")
    clone = pickle.loads(pickle.dumps(splitter))
    assert clone.split("One here. Two there.") == splitter.split("One here. Two there.")
    with pytest.raises(ValueError, match="unknown Punkt engine"):
        SentenceSplitter(trained_params, engine="other")
