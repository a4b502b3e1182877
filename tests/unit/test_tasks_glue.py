"""GLUE TSV readers (MNLI, QQP) and BERT sentence-pair samples."""
import os

import pytest

from tasks.glue.data import build_pair_sample, read_mnli, read_qqp, truncate_pair
from tasks.zeroshot_gpt.datasets import TaskDataError

GLUE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "glue")
MNLI_HEADER = "\t".join(["index", "promptID", "pairID", "genre", "s1b", "s2b", "s1p", "s2p", "sentence1", "sentence2",
                         "label1", "gold_label"])


def test_shipped_mnli_files_read():
    train = read_mnli(os.path.join(GLUE, "MNLI", "train.tsv"))
    assert len(train) == 8 and {e.label for e in train} == {0, 1, 2}
    assert train[0].text_a == "The museum opens at nine every morning." and train[0].label == 0  # contradiction
    assert train[1].label == 1 and train[2].label == 2 and train[0].line == 2
    assert len(read_mnli(os.path.join(GLUE, "MNLI", "dev_matched.tsv"))) == 4
    assert len(read_mnli(os.path.join(GLUE, "MNLI", "dev_mismatched.tsv"))) == 4
    test = read_mnli(os.path.join(GLUE, "MNLI", "test_matched.tsv"))  # 10 columns: unlabelled
    assert [e.label for e in test] == [0, 0, 0]


def test_shipped_qqp_files_read():
    train = read_qqp(os.path.join(GLUE, "QQP", "train.tsv"))
    assert [e.label for e in train] == [1, 0, 1, 0, 1, 0]
    assert train[0].text_b == "What is the best way to learn swimming?"
    assert len(read_qqp(os.path.join(GLUE, "QQP", "dev.tsv"))) == 4


def _mnli_row(label="entailment", a="a b", b="c d", extra=0):
    return "\t".join(["0", "1", "1e", "g", "x", "y", "x", "y", a, b, label, label] + ["z"] * extra)


@pytest.mark.parametrize("lines,message", [
    ([], ": the file is empty"),
    ([MNLI_HEADER], ": no examples after the header"),
    ([MNLI_HEADER, _mnli_row(), _mnli_row(label="maybe")], ":3: unknown MNLI label 'maybe'"),
    ([MNLI_HEADER, _mnli_row(extra=1)], ":2: 13 columns, the header has 12"),
    ([MNLI_HEADER, _mnli_row(a=" ")], ":2: empty sentence1 or sentence2"),
    (["a\tb\tc"], ":1: an MNLI header has at least 10 columns, found 3"),
])
def test_bad_mnli_files_name_file_and_line(tmp_path, lines, message):
    path = tmp_path / "train.tsv"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(TaskDataError, match=f"^{path}{message}"):
        read_mnli(str(path))


@pytest.mark.parametrize("lines,message", [
    (["id\tq1\tq2\tquestion1\tquestion2\tis_duplicate", "0\t1\t2\ta?\tb?\t2"], ":2: unknown QQP label '2'"),
    (["id\tq1\tq2\tquestion1\tquestion2\tis_duplicate", "0\t1\t2\ta?\tb?"], ":2: 5 columns, the header has 6"),
    (["id\tquestion1", "0\ta?"], ":1: a QQP header has 6 columns"),
    (["id\tq1\tq2\tquestion1\tquestion2\tis_duplicate", "0\t1\t2\t\tb?\t1"], ":2: empty question1 or question2"),
])
def test_bad_qqp_files_name_file_and_line(tmp_path, lines, message):
    path = tmp_path / "dev.tsv"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(TaskDataError, match=f"^{path}{message}"):
        read_qqp(str(path))


def test_qqp_test_file_has_three_columns(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text('id\tquestion1\tquestion2\n7\tsay "hi"?\tsay hello?\n')
    (example,) = read_qqp(str(path))
    assert example.uid == "7" and example.text_a == 'say "hi"?' and example.label == 0


def test_truncate_pair_trims_the_longer_side_first():
    a, b = list(range(10)), list(range(4))
    truncate_pair(a, b, 8)
    assert a == [0, 1, 2, 3] and b == [0, 1, 2, 3]
    a, b = [1, 2, 3], [4, 5, 6]
    truncate_pair(a, b, 5)
    assert a == [1, 2] and b == [4, 5, 6]  # a tie trims the first side


def test_build_pair_sample_layout():
    sample = build_pair_sample([5, 6], [7], max_seq_length=8, cls_id=101, sep_id=102, pad_id=0)
    assert sample["text"].tolist() == [101, 5, 6, 102, 7, 102, 0, 0]
    assert sample["types"].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    assert sample["padding_mask"].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    long = build_pair_sample(list(range(20)), list(range(30, 40)), max_seq_length=9, cls_id=1, sep_id=2, pad_id=0)
    assert long["padding_mask"].sum() == 9 and long["text"][-1] == 2
    with pytest.raises(ValueError, match="--seq-length 3"):
        build_pair_sample([1], [2], max_seq_length=3, cls_id=1, sep_id=2, pad_id=0)


def test_classification_model_saves_megatron_head_name_and_has_no_tied_output():
    import torch

    from megatron.checkpoint_state import nest_state_dict
    from megatron.core.transformer import TransformerConfig
    from tasks.finetune_utils import Classification

    config = TransformerConfig(num_layers=1, hidden_size=16, num_attention_heads=2, hidden_dropout=0.0,
                               attention_dropout=0.0)
    model = Classification(config, vocab_size=64, max_sequence_length=8, num_classes=3)
    nested = nest_state_dict(model.state_dict())
    assert set(nested) == {"language_model", "classification_head"}
    assert nested["classification_head"]["weight"].shape == (3, 16)
    # The head is not tied to the word embedding: no pipeline stage takes part in the embedding group.
    assert not model.has_output_layer()
    ids = torch.randint(3, 64, (2, 8))
    assert model(ids, torch.ones_like(ids), torch.zeros_like(ids)).shape == (2, 3)
