#!/usr/bin/env python
"""Open-domain QA demo data from the bundled corpus (``tools/make_demo_corpus.py``): an evidence file
of passages and cloze questions whose answers are spans of known passages.

* Evidence: every document's text is cut into passages of ``--passage-words`` words (DPR-style TSV:
  ``id<TAB>text<TAB>title``, ids from 1).
* Questions: from a sample of passages, one sentence of at least ``--min-question-words`` words is
  taken; its answer is a salient word of the sentence (a number, a capitalised word not at the start,
  or a code identifier: ``snake_case``, ``dotted.name``, ``CamelCase``), which occurs once in the
  sentence; the question is the sentence with the answer replaced by ``what``. Each question's answer
  is thus a span of the passage it came from (which the file records apart), and of any other passage
  that happens to hold the same sentence.
* The questions are shuffled with ``--seed`` and split into train/dev/test (``--split``), written as
  NQ-open TSV (``question<TAB>['answer']``), the format ``tasks/main.py --task ORQA`` reads.

    python tools/make_orqa_demo_questions.py --input demo/corpus.json --output-dir demo/orqa
"""
import argparse
import csv
import json
import os
import random
import re
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.core.fileio import atomic_open  # noqa: E402

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`\"'(])")
_WORD = re.compile(r"[A-Za-z0-9_.]+[A-Za-z0-9_]|[A-Za-z0-9]")
_IDENTIFIER = re.compile(r"^(?:[a-z][a-z0-9]*_[a-z0-9_]+|[A-Za-z_]\w*\.[A-Za-z_][\w.]*|[A-Z][a-z]+[A-Z]\w*)$")


def _clean(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


def passages_of(text: str, words_per_passage: int):
    words = _clean(text).split(" ")
    for start in range(0, len(words), words_per_passage):
        chunk = words[start:start + words_per_passage]
        if len(chunk) >= max(8, words_per_passage // 4):
            yield " ".join(chunk)


def _is_salient(word: str, position: int) -> bool:
    if len(word) < 2 or len(word) > 30:
        return False
    if word.isdigit():
        return len(word) <= 6
    if _IDENTIFIER.match(word):
        return True
    return position > 0 and word[0].isupper() and word[1:].islower() and word.isalpha() and len(word) >= 4


def question_of(sentence: str, min_words: int, rng: random.Random):
    """(question, answer) from one sentence, or None when it has no usable salient word."""
    words = sentence.split(" ")
    if len(words) < min_words or len(words) > 60:
        return None
    candidates = []
    for position, raw in enumerate(words):
        match = _WORD.fullmatch(raw.strip(".,;:()\"'`"))
        if match is None:
            continue
        word = match.group(0)
        if _is_salient(word, position) and sum(w.strip(".,;:()\"'`") == word for w in words) == 1:
            candidates.append((position, raw, word))
    if not candidates:
        return None
    position, raw, word = rng.choice(candidates)
    asked = list(words)
    asked[position] = raw.replace(word, "what", 1)
    question = " ".join(asked).rstrip(".") + "?"
    return question, word


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="Loose JSON corpus (title, text) from make_demo_corpus.py.")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--passage-words", type=int, default=48, help="Words per evidence passage.")
    parser.add_argument("--num-questions", type=int, default=1200, help="Questions to make (at most one per passage).")
    parser.add_argument("--min-question-words", type=int, default=8)
    parser.add_argument("--split", default="80,10,10", help="train,dev,test proportions.")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    try:
        shares = [float(x) for x in args.split.split(",")]
        if len(shares) != 3 or min(shares) < 0 or sum(shares) <= 0:
            raise ValueError
    except ValueError:
        parser.error(f"--split {args.split!r}: expected three non-negative numbers, e.g. 80,10,10")
    if not os.path.isfile(args.input):
        parser.error(f"--input {args.input}: file not found")

    passages = []  # (id, text, title)
    with open(args.input, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                text, title = doc["text"], doc.get("title", "")
            except (ValueError, KeyError, TypeError) as error:
                parser.error(f"{args.input}:{line_no}: not a JSON object with a 'text' field ({error})")
            for passage in passages_of(text, args.passage_words):
                passages.append((len(passages) + 1, passage, _clean(title)))
    if not passages:
        parser.error(f"--input {args.input}: no passages")

    rng = random.Random(args.seed)
    order = list(range(len(passages)))
    rng.shuffle(order)
    questions = []  # (question, answer, passage id)
    for index in order:
        pid, text, _ = passages[index]
        sentences = _SENTENCE_END.split(text)
        rng.shuffle(sentences)
        for sentence in sentences:
            made = question_of(sentence, args.min_question_words, rng)
            if made:
                questions.append((*made, pid))
                break
        if len(questions) == args.num_questions:
            break

    os.makedirs(args.output_dir, exist_ok=True)
    with atomic_open(os.path.join(args.output_dir, "evidence.tsv"), "w", encoding="utf-8") as out:
        # csv quoting (DPR's files are written so): passages quote code and strings.
        writer = csv.writer(out, delimiter="\t", lineterminator="\n")
        writer.writerow(["id", "text", "title"])
        writer.writerows(passages)
    total = sum(shares)
    n_train = int(len(questions) * shares[0] / total)
    n_dev = int(len(questions) * shares[1] / total)
    splits = {"train": questions[:n_train], "dev": questions[n_train:n_train + n_dev],
              "test": questions[n_train + n_dev:]}
    for name, rows in splits.items():
        with atomic_open(os.path.join(args.output_dir, f"{name}.tsv"), "w", encoding="utf-8") as out:
            writer = csv.writer(out, delimiter="\t", lineterminator="\n")
            writer.writerows([question, json.dumps([answer])] for question, answer, _ in rows)
        with atomic_open(os.path.join(args.output_dir, f"{name}_source_passages.txt"), "w", encoding="utf-8") as out:
            out.write("".join(f"{pid}\n" for _, _, pid in rows))
    print(f"{len(passages)} passages, {len(questions)} questions: " +
          ", ".join(f"{name} {len(rows)}" for name, rows in splits.items()) + f" -> {args.output_dir}")


if __name__ == "__main__":
    main()
