"""DPR-style answer matching and top-k accuracy on hand-made examples with known answers."""
import pytest

from megatron.retrieval.qa_validation import (SimpleTokenizer, has_answer, match_questions,
                                              normalize, top_k_hits)


def test_tokenizer_splits_words_and_punctuation():
    tokens = SimpleTokenizer().tokenize("The U.S. Open, 2019's final!")
    assert tokens == ["the", "u", ".", "s", ".", "open", ",", "2019", "'", "s", "final", "!"]
    assert SimpleTokenizer().tokenize("Cafe\u0301 Noir", uncased=False) == ["Cafe\u0301", "Noir"]


def test_nfd_makes_composed_and_decomposed_accents_equal():
    assert normalize("caf\u00e9") == "cafe\u0301"
    assert has_answer(["Café"], "We met at the cafe\u0301 downtown.")
    assert has_answer(["cafe\u0301"], "We met at the CAF\u00c9 downtown.")
    assert not has_answer(["cafe"], "We met at the café downtown.")  # the accent matters


def test_string_match_is_case_insensitive_and_token_aligned():
    passage = "The Cat sat on the mat. Categories of animals vary."
    assert has_answer(["cat"], passage)
    assert has_answer(["sat on the"], passage)
    assert not has_answer(["category"], passage)
    assert not has_answer(["at"], passage)  # inside "Cat"/"sat"/"mat", never a token of its own
    assert not has_answer(["on mat"], passage)  # tokens must be contiguous
    assert has_answer(["dog", "the mat"], passage)  # any answer counts
    assert has_answer(["U.S."], "born in the u . s . in 1950")
    assert not has_answer(["", "   "], passage)  # empty answers never match


def test_regex_match():
    passage = "Mount Everest is 8,849 metres tall."
    assert has_answer([r"8,?849"], passage, match_type="regex")
    assert has_answer([r"mount\s+everest"], passage, match_type="regex")
    assert not has_answer([r"^Everest"], passage, match_type="regex")
    with pytest.raises(ValueError, match=r"answer '8,\(849' is not a valid regex"):
        has_answer([r"8,(849"], passage, match_type="regex")
    with pytest.raises(ValueError, match="--faiss-match 'fuzzy'"):
        has_answer(["x"], passage, match_type="fuzzy")


def test_top_k_hits_counts_first_hit_rank_and_is_monotone():
    hits = [
        [True, False, False, False],   # first hit at rank 1
        [False, False, True, True],    # rank 3
        [False, False, False, False],  # never
        [False, True, False, False],   # rank 2
    ]
    result = top_k_hits(hits, [1, 2, 3, 4, 100])
    assert result == {1: 25.0, 2: 50.0, 3: 75.0, 4: 75.0, 100: 75.0}
    values = [result[k] for k in sorted(result)]
    assert values == sorted(values)
    with pytest.raises(ValueError, match="no questions"):
        top_k_hits([], [1])


@pytest.mark.parametrize("workers", [0, 2])
def test_match_questions_end_to_end(workers):
    answers = [["Paris"], ["1969", "nineteen sixty-nine"], ["Au"]]
    passages = [
        ["Berlin is the capital of Germany.", "Paris is the capital of France."],
        ["Apollo 11 landed in July 1969.", "The moon is far."],
        ["Gold has the symbol AU.", "Silver is Ag; gold is Au."],
    ]
    hits = match_questions(answers, passages, "string", workers=workers)
    assert hits == [[False, True], [True, False], [True, True]]
    assert top_k_hits(hits, [1, 2]) == {1: pytest.approx(200 / 3), 2: 100.0}


def test_match_questions_validates_inputs():
    with pytest.raises(ValueError, match="2 answer lists but 1 passage lists"):
        match_questions([["a"], ["b"]], [["a"]])
    with pytest.raises(ValueError, match="not a valid regex"):
        match_questions([["("]], [["text"]], "regex", workers=2)
