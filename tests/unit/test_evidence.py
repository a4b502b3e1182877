"""Retrieval inputs: NQ-open question files, the DPR evidence TSV, token layouts, and the
indexer's split of a corpus over data-parallel ranks."""
import os

import pytest

from megatron.retrieval.evidence import (
    EvidenceDataset,
    QuestionDataset,
    passage_tokens,
    question_tokens,
    read_qa_file,
)
from megatron.retrieval.indexer import format_eta, shard_range

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "retrieval")


@pytest.fixture(scope="module")
def tokenizer():
    from megatron.tokenizer import bert_uncased_vocab_path
    from megatron.tokenizer.bert import BertWordPieceLowerCase

    return BertWordPieceLowerCase(bert_uncased_vocab_path())


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_reads_the_dpr_tab_separated_sample():
    questions, answers = read_qa_file(os.path.join(DATA, "nq_sample.tsv"))
    assert len(questions) == 8
    assert questions[0] == "what is the capital of france" and answers[0] == ["Paris"]
    assert answers[1] == ["Guido van Rossum", "van Rossum"]


def test_reads_csv_with_header_json_lists_and_json_lines(tmp_path):
    csv_path = _write(tmp_path, "q.csv", 'question,answers\n"who, exactly, wrote it","[""Ann"", ""Bo""]"\nwhere,[\'x\']\n')
    assert read_qa_file(csv_path) == (["who, exactly, wrote it", "where"], [["Ann", "Bo"], ["x"]])
    jsonl = _write(tmp_path, "q.jsonl", '{"question": "a?", "answer": ["1", "2"]}\n\n{"question": "b?", "answer": "3"}\n')
    assert read_qa_file(jsonl) == (["a?", "b?"], [["1", "2"], ["3"]])


@pytest.mark.parametrize("text,line,reason", [
    ("q one\t['a']\nq two\t__import__('os').system('true')\n", 2, "not a list literal"),
    ("q one\t['a']\textra\n", 1, "expected 2 fields"),
    ("q one\t[1, 2]\n", 1, "list of strings"),
    ("q one\t[]\n", 1, "no answers"),
])
def test_bad_question_lines_name_file_and_line(tmp_path, text, line, reason):
    path = _write(tmp_path, "bad.tsv", text)
    with pytest.raises(ValueError, match=rf"bad.tsv:{line}: .*{reason}"):
        read_qa_file(path)


def test_question_layout_and_truncation(tokenizer):
    tokens, pad_mask = question_tokens(tokenizer, "What is the capital of France?", 12)
    words = tokenizer.tokenize("What is the capital of France?")
    assert tokens.tolist() == [tokenizer.cls, *words, tokenizer.sep] + [tokenizer.pad] * (10 - len(words))
    assert pad_mask.tolist() == [1] * (len(words) + 2) + [0] * (10 - len(words))
    short, short_mask = question_tokens(tokenizer, "one two three four five six", 5)
    assert short.tolist() == [tokenizer.cls, *tokenizer.tokenize("one two three"), tokenizer.sep]
    assert short_mask.tolist() == [1] * 5
    dataset = QuestionDataset(os.path.join(DATA, "nq_sample.tsv"), tokenizer, 16)
    item = dataset[7]
    assert item["row_id"] == 7 and item["tokens"].shape == (16,)


def test_passage_layout_truncates_text_first_then_title(tokenizer):
    title, text = tokenizer.tokenize("Paris"), tokenizer.tokenize("Paris is the capital of France")
    tokens, pad_mask = passage_tokens(tokenizer, "Paris", "Paris is the capital of France", 20)
    real = [tokenizer.cls, *title, tokenizer.sep, *text, tokenizer.sep]
    assert tokens.tolist() == real + [tokenizer.pad] * (20 - len(real))
    assert int(pad_mask.sum()) == len(real)
    tokens, _ = passage_tokens(tokenizer, "Paris", "Paris is the capital of France", 6)
    assert tokens.tolist() == [tokenizer.cls, *title, tokenizer.sep, *text[:6 - 3 - len(title)], tokenizer.sep]
    long_title = "one two three four five six seven"
    tokens, _ = passage_tokens(tokenizer, long_title, "body", 7)
    # The title keeps seq - 4 tokens, so one text token always fits.
    assert tokens.tolist() == [tokenizer.cls, *tokenizer.tokenize("one two three"), tokenizer.sep,
                               *tokenizer.tokenize("body"), tokenizer.sep]


def test_evidence_tsv_integer_ids_and_quoted_text(tokenizer):
    evidence = EvidenceDataset(os.path.join(DATA, "evidence_sample.tsv"), tokenizer, 32)
    assert len(evidence) == 12
    assert evidence.all_row_ids().tolist() == list(range(1, 13))
    text, title = evidence.passage(10)
    assert title == "Beethoven" and '"Choral"' in text
    item = evidence[0]
    assert item["row_id"] == 1
    expected, _ = passage_tokens(tokenizer, "Paris", evidence.passage(1)[0], 32)
    assert item["tokens"].tolist() == expected.tolist()
    assert evidence.source_id(3) == "3"


def test_evidence_string_ids_map_to_positions(tmp_path, tokenizer):
    path = _write(tmp_path, "ev.tsv", "id\ttext\ttitle\nwiki:7\tfirst text\tA\n\nwiki:9\tsecond text\tB\n")
    evidence = EvidenceDataset(path, tokenizer, 16)
    assert evidence.all_row_ids().tolist() == [0, 1]
    assert evidence.source_id(1) == "wiki:9" and evidence.passage(1) == ("second text", "B")
    assert evidence[1]["row_id"] == 1


@pytest.mark.parametrize("text,line,reason", [
    ("identifier\ttext\ttitle\n1\ta\tb\n", 1, "expected the header"),
    ("id\ttext\ttitle\n1\ta\tb\n2\tc\n", 3, "expected 3 tab-separated fields"),
    ("id\ttext\ttitle\n1\ta\tb\n2\tc\td\n1\te\tf\n", 4, "duplicate passage id 1"),
    ("id\ttext\ttitle\n1\t\"open quote\tb\n", 2, "one well-quoted line"),
])
def test_bad_evidence_lines_name_file_and_line(tmp_path, tokenizer, text, line, reason):
    path = _write(tmp_path, "ev.tsv", text)
    with pytest.raises(ValueError, match=rf"ev.tsv:{line}: .*{reason}"):
        EvidenceDataset(path, tokenizer, 16)


@pytest.mark.parametrize("num_items,world_size", [(0, 3), (5, 1), (7, 2), (10, 4), (3, 8)])
def test_shard_ranges_tile_the_corpus_once(num_items, world_size):
    ranges = [shard_range(num_items, rank, world_size) for rank in range(world_size)]
    covered = [i for first, last in ranges for i in range(first, last)]
    assert covered == list(range(num_items))
    sizes = [last - first for first, last in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_eta_format():
    assert format_eta(3725.4) == "1:02:05" and format_eta(-1) == "0:00:00"


def test_question_dataset_rejects_missing_file(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="question file not found"):
        QuestionDataset(str(tmp_path / "none.tsv"), tokenizer, 8)
