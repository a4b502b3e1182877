"""Reading the RACE layout (directories of ``*.txt`` files, one JSON object per line with
``article``, ``questions``, ``options``, ``answers``) into four BERT samples per question."""
import glob
import json
import os
from typing import Callable, Dict, List

import numpy as np

from tasks.glue.data import build_pair_sample
from tasks.zeroshot_gpt.datasets import TaskDataError

NUM_CHOICES = 4
MAX_QA_TOKENS = 128
ANSWERS = {"A": 0, "B": 1, "C": 2, "D": 3}


def race_files(path: str) -> List[str]:
    """``path`` itself when it is a file, else every ``*.txt`` below it, in sorted order."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise TaskDataError(f"{path}: no such file or directory")
    files = sorted(glob.glob(os.path.join(path, "**", "*.txt"), recursive=True))
    if not files:
        raise TaskDataError(f"{path}: no *.txt files (expected the RACE layout, e.g. dev/middle/1.txt)")
    return files


def _question_with_option(question: str, option: str) -> str:
    # Cloze questions ("... _ ...") take the option in the blank; others are followed by it.
    return question.replace("_", option) if "_" in question else f"{question} {option}"


def read_race_file(path: str, tokenize: Callable[[str], List[int]], seq_length: int, cls_id: int, sep_id: int,
                   pad_id: int) -> List[Dict[str, np.ndarray]]:
    samples = []
    try:
        with open(path, encoding="utf-8") as handle:
            lines = list(enumerate(handle, 1))
    except UnicodeDecodeError as error:
        raise TaskDataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise TaskDataError(f"{path}: cannot read: {error.strerror}") from None
    for number, line in lines:
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise TaskDataError(f"{where}: not JSON: {error.msg}") from None
        if not isinstance(record, dict):
            raise TaskDataError(f"{where}: expected a JSON object")
        for key, kind in (("article", str), ("questions", list), ("options", list), ("answers", list)):
            if not isinstance(record.get(key), kind):
                raise TaskDataError(f"{where}: missing or mistyped {key!r} (a {kind.__name__})")
        questions, options, answers = record["questions"], record["options"], record["answers"]
        if not len(questions) == len(options) == len(answers) or not questions:
            raise TaskDataError(f"{where}: {len(questions)} questions, {len(options)} option lists and "
                                f"{len(answers)} answers; they must be as many, and at least one")
        context = tokenize(record["article"])
        for q, (question, choices, answer) in enumerate(zip(questions, options, answers)):
            if not isinstance(choices, list) or len(choices) != NUM_CHOICES:
                raise TaskDataError(f"{where}: question {q + 1} has {len(choices)} options, expected {NUM_CHOICES}")
            if answer not in ANSWERS:
                raise TaskDataError(f"{where}: question {q + 1} has answer {answer!r}, expected one of A, B, C, D")
            per_choice = []
            for option in choices:
                qa = tokenize(_question_with_option(str(question), str(option)))[:MAX_QA_TOKENS]
                per_choice.append(build_pair_sample(qa, context, seq_length, cls_id, sep_id, pad_id))
            samples.append({key: np.stack([s[key] for s in per_choice]) for key in per_choice[0]}
                           | {"label": np.int64(ANSWERS[answer])})
    if not samples:
        raise TaskDataError(f"{path}: no questions (the file is empty)")
    return samples
