"""The RACE reader: directory layout, four samples per question, option substitution, bad files."""
import json
import os

import pytest

from tasks.race.data import _question_with_option, race_files, read_race_file
from tasks.zeroshot_gpt.datasets import TaskDataError

RACE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "race")


def word_tokenize(text):
    """A stand-in tokenizer: one id per word (by length, so ids stay small)."""
    return [10 + len(word) for word in text.split()]


def read(path, seq_length=24):
    return read_race_file(path, word_tokenize, seq_length, cls_id=1, sep_id=2, pad_id=0)


def test_shipped_race_layout():
    assert [os.path.relpath(f, RACE) for f in race_files(os.path.join(RACE, "train"))] == [
        "train/middle/1.txt", "train/middle/2.txt"]
    samples = [s for f in race_files(os.path.join(RACE, "train")) for s in read(f)]
    assert len(samples) == 5
    assert samples[0]["text"].shape == (4, 24) and samples[0]["types"].shape == (4, 24)
    assert [int(s["label"]) for s in samples] == [2, 1, 1, 1, 1]


def test_choice_rows_are_question_option_then_article():
    (sample,) = read(os.path.join(RACE, "dev", "middle", "1.txt"), seq_length=64)[:1]
    row = sample["text"][2].tolist()  # option "three"
    qa = word_tokenize("How many years did the tree give no fruit? three")
    assert row[:len(qa) + 2] == [1] + qa + [2]
    assert sample["types"][2][len(qa) + 2] == 1  # the article is segment B
    assert _question_with_option("The apples were _ .", "red") == "The apples were red ."
    assert _question_with_option("Who came?", "Tom") == "Who came? Tom"


@pytest.mark.parametrize("record,message", [
    ({"article": "a b", "questions": ["q?"], "options": [["a", "b", "c"]], "answers": ["A"]},
     ":1: question 1 has 3 options, expected 4"),
    ({"article": "a b", "questions": ["q?"], "options": [["a", "b", "c", "d"]], "answers": ["E"]},
     ":1: question 1 has answer 'E'"),
    ({"article": "a b", "questions": ["q?", "r?"], "options": [["a", "b", "c", "d"]], "answers": ["A"]},
     ":1: 2 questions, 1 option lists and 1 answers"),
    ({"questions": ["q?"], "options": [["a", "b", "c", "d"]], "answers": ["A"]}, ":1: missing or mistyped 'article'"),
])
def test_bad_race_records_name_file_and_line(tmp_path, record, message):
    path = tmp_path / "1.txt"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(TaskDataError, match=f"^{path}{message}"):
        read(str(path))


def test_empty_or_missing_race_inputs(tmp_path):
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(TaskDataError, match="empty.txt: no questions"):
        read(str(tmp_path / "empty.txt"))
    (tmp_path / "bad.txt").write_text("{not json\n")
    with pytest.raises(TaskDataError, match="bad.txt:1: not JSON"):
        read(str(tmp_path / "bad.txt"))
    with pytest.raises(TaskDataError, match="nowhere: no such file or directory"):
        race_files(str(tmp_path / "nowhere"))
    os.mkdir(tmp_path / "dir")
    with pytest.raises(TaskDataError, match="dir: no \\*.txt files"):
        race_files(str(tmp_path / "dir"))


def test_multiple_choice_model_scores_each_choice_and_saves_megatron_head_name():
    import torch

    from megatron.checkpoint_state import nest_state_dict
    from megatron.core.transformer import TransformerConfig
    from tasks.finetune_utils import MultipleChoice

    config = TransformerConfig(num_layers=1, hidden_size=16, num_attention_heads=2, hidden_dropout=0.0,
                               attention_dropout=0.0)
    model = MultipleChoice(config, vocab_size=64, max_sequence_length=8)
    nested = nest_state_dict(model.state_dict())
    assert set(nested) == {"language_model", "multichoice_head"}
    assert set(nested["multichoice_head"]) == {"weight", "bias"}
    ids = torch.randint(3, 64, (2, 4, 8))
    scores = model(ids, torch.ones_like(ids), torch.zeros_like(ids))
    assert scores.shape == (2, 4)
    # Each choice is scored on its own: the same sequence gets the same score wherever it sits.
    swapped = model(ids.flip(1), torch.ones_like(ids), torch.zeros_like(ids))
    assert torch.allclose(swapped, scores.flip(1), atol=1e-6)
