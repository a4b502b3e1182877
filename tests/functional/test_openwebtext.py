"""tools/openwebtext end to end: the CLIs chained on a small noisy corpus whose planted defects
are known (manifest.json), bad input reported in one line, filter_ngrams.py's key threshold and
dictionaries (its own JSON and Megatron-LM's pickle), and (slow) examples/clean_corpus.sh."""
import collections
import json
import os
import pickle
import subprocess
import sys

import pytest

from megatron.preprocessing.webtext import ngrams
from megatron.preprocessing.webtext.jsonl import WebtextError
from megatron.preprocessing.webtext.minhash import jaccard, shingle_set

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(REPO, "tools", "openwebtext")
LAMBADA = os.path.join(REPO, "tests", "data", "lambada_sample.jsonl")


def run(tool, *args, check=True):
    result = subprocess.run([sys.executable, os.path.join(TOOLS, tool), *map(str, args)], capture_output=True,
                            text=True, timeout=300)
    if check:
        assert result.returncode == 0, f"{tool} failed:\n{result.stderr[-3000:]}"
    return result


def load(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def test_chain_on_noisy_corpus(tmp_path):
    raw = tmp_path / "raw"
    run("make_noisy_corpus.py", "--output-dir", raw, "--num-docs", 400, "--seed", 7, "--task-file", LAMBADA)
    manifest = json.loads((raw / "manifest.json").read_text())
    corpus = load(raw / "corpus.json")
    order = {r["url"]: i for i, r in enumerate(corpus)}

    result = run("blacklist_urls.py", raw / "urls", tmp_path / "urls.txt")
    urls = (tmp_path / "urls.txt").read_text().split()
    assert len(urls) == len(corpus) and "duplicate" in result.stdout
    assert not any("imgur" in u or u.endswith(".pdf") for u in urls)

    run("exact_dedup.py", raw / "corpus.json", tmp_path / "exact.json", "--workers", 2, "--removed",
        tmp_path / "removed.tsv")
    exact = {r["url"] for r in load(tmp_path / "exact.json")}
    removed_lines = (tmp_path / "removed.tsv").read_text().splitlines()
    assert len(removed_lines) == len(corpus) - len(exact) >= len(manifest["exact_duplicates"])
    dropped, kept_at = removed_lines[0].split("\t")
    line_of = lambda where: int(where.rsplit(":", 1)[1])  # noqa: E731
    assert corpus[line_of(dropped) - 1]["url"] not in exact and corpus[line_of(kept_at) - 1]["url"] in exact
    assert all(a in exact and b not in exact for a, b in manifest["exact_duplicates"])

    result = run("cleanup_dataset.py", tmp_path / "exact.json", tmp_path / "clean.json", "--min-tokens", 64,
                 "--workers", 2)
    clean = load(tmp_path / "clean.json")
    clean_urls = {r["url"] for r in clean}
    assert not clean_urls & set(manifest["foreign"]) and not clean_urls & set(manifest["short"])
    fixed = [r for r in clean if r["url"] in set(manifest["mojibake"])]
    assert fixed and not any("\u00e2\u20ac" in r["text"] for r in fixed)
    assert len(clean) >= 0.8 * len(exact)  # English documents are kept

    run("find_duplicates.py", "--inputs", tmp_path / "clean.json", "url", "--output", tmp_path / "pairs.json",
        "--num-workers", 2, "--save-fingerprints", tmp_path / "fp.npz")
    text = {r["url"]: r["text"] for r in clean}
    shingles = {u: shingle_set(t, 5) for u, t in text.items()}
    reported = [(a, b, s) for line in load(tmp_path / "pairs.json") for a, pairs in line.items() for b, s in pairs]
    for a, b, similarity in reported:  # every reported pair is really similar
        assert similarity >= 0.5 and abs(jaccard(shingles[a], shingles[b]) - similarity) < 1e-6
    # Reusing the fingerprints gives the same pairs without re-reading the corpus for them.
    run("find_duplicates.py", "--load-fingerprints", tmp_path / "fp.npz", "--output", tmp_path / "pairs2.json")
    assert (tmp_path / "pairs2.json").read_text() == (tmp_path / "pairs.json").read_text()

    run("group_duplicate_url.py", tmp_path / "pairs.json", tmp_path / "groups.json", 0.5)
    run("remove_group_duplicates.py", tmp_path / "groups.json", tmp_path / "clean.json", tmp_path / "dedup.json")
    dedup = {r["url"] for r in load(tmp_path / "dedup.json")}
    planted = [(a, b) for a, b, _ in manifest["near_duplicates"]
               if a in shingles and b in shingles and jaccard(shingles[a], shingles[b]) >= 0.5]
    assert len(planted) >= 8
    removed = sum(a in dedup and b not in dedup for a, b in planted)
    assert removed / len(planted) >= 0.85

    result = run("filter_ngrams.py", "--tasks", "lambada", "--lambada-path", LAMBADA, "--dedup-dataset",
                 tmp_path / "dedup.json", "text", "--output", tmp_path / "final.json", "--num-threads", 2)
    final = load(tmp_path / "final.json")
    task_grams = set()
    for sample in ngrams.task_texts("lambada", [LAMBADA]):
        w = ngrams.words(sample)
        task_grams.update(" ".join(w[i:i + 13]) for i in range(len(w) - 12))
    for record in final:
        w = ngrams.words(record["text"])
        assert not {" ".join(w[i:i + 13]) for i in range(len(w) - 12)} & task_grams
    planted_tasks = [u for u in manifest["task_text"] if u in dedup]
    assert planted_tasks and f"lambada (documents)  {len(planted_tasks):>12,}".split() == \
        [line for line in result.stdout.splitlines() if "lambada (documents)" in line][0].split()
    positions = [order[r["url"]] for r in final]
    assert positions == sorted(positions)  # corpus order preserved through every step

    # Shards merge back in order.
    shards = tmp_path / "shards"
    shards.mkdir()
    lines = (tmp_path / "final.json").read_text().splitlines(keepends=True)
    (shards / "a.json").write_text("".join(lines[:50]))
    (shards / "b.json").write_text("".join(lines[50:]))
    run("merge_jsons.py", "--json_path", shards, "--output_file", tmp_path / "merged.json")
    assert (tmp_path / "merged.json").read_text() == "".join(lines)


def test_bad_input_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"text": "fine", "url": "a"}\n{"text": broken\n')
    for tool, args in (("cleanup_dataset.py", [bad, tmp_path / "o.json"]),
                       ("exact_dedup.py", [bad, tmp_path / "o.json"]),
                       ("find_duplicates.py", ["--inputs", bad, "url", "--output", tmp_path / "o.json"]),
                       ("filter_ngrams.py", ["--tasks", "lambada", "--lambada-path", LAMBADA,
                                             "--dedup-dataset", bad, "text", "--output", tmp_path / "o.json"])):
        result = run(tool, *args, check=False)
        assert result.returncode == 1, (tool, result.stderr)
        assert result.stderr.strip().count("\n") == 0 and f"{bad}:2: not JSON" in result.stderr, (tool, result.stderr)
        assert not (tmp_path / "o.json").exists()  # nothing half-written is published
    result = run("find_duplicates.py", "--inputs", bad, "--output", tmp_path / "o.json", check=False)
    assert result.returncode == 1 and "pairs of <file> <id key>" in result.stderr
    result = run("filter_ngrams.py", "--tasks", "race", "--dedup-dataset", bad, "text", "--output", "o", check=False)
    assert result.returncode == 1 and "--tasks race needs --race-path" in result.stderr


# Two task examples of 17 and 16 words (13-grams: 5 and 4) and filler that shares no 13-gram with them.
COMMON = "the quick brown fox jumps over the lazy dog while seven silver swans sing softly near the river"
RARE = "an entirely different passage about purple mountains where curious goats wander between ancient stone walls"
FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()


def ngram_corpus(tmp_path, plants):
    """A LAMBADA-format task file with COMMON and RARE, and a corpus with one document per entry of
    ``plants`` (the task texts pasted into that document, in the middle of 120 filler words)."""
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"text": t}) + "\n" for t in (COMMON, RARE)))
    corpus = tmp_path / "corpus.json"
    with open(corpus, "w") as handle:
        for i, planted in enumerate(plants):
            filler = [FILLER[(i + j) % len(FILLER)] for j in range(120)]
            text = " ".join(filler[:60] + [p + "." for p in planted] + filler[60:])
            handle.write(json.dumps({"id": i, "text": text}) + "\n")
    return task, corpus


def test_filter_ngrams_key_threshold_keeps_common_ngrams(tmp_path):
    # COMMON in 10 documents: common text at Megatron-LM's default threshold of 10, kept. RARE in 9
    # documents, twice in one: counted per document (9), as Megatron-LM counts, so it is filtered.
    plants = [(COMMON,)] * 10 + [(RARE, RARE)] + [(RARE,)] * 8 + [()] * 3
    task, corpus = ngram_corpus(tmp_path, plants)
    common_ids = list(range(10))
    clean_ids = list(range(19, 22))
    base = ["--tasks", "lambada", "--lambada-path", task, "--dedup-dataset", corpus, "text", "--mode", "remove"]
    run("filter_ngrams.py", *base, "--output", tmp_path / "default.json", "--save-dictionary", tmp_path / "d.json")
    assert [r["id"] for r in load(tmp_path / "default.json")] == common_ids + clean_ids
    dictionary = json.loads((tmp_path / "d.json").read_text())
    w = ngrams.words(RARE)
    assert dictionary == {" ".join(w[i:i + 13]): ["lambada"] for i in range(len(w) - 12)}

    # Above the count, COMMON is filtered too; 0 skips counting and filters every task n-gram.
    for threshold in (11, 0):
        run("filter_ngrams.py", *base, "--output", tmp_path / "all.json", "--key-threshold", threshold)
        assert [r["id"] for r in load(tmp_path / "all.json")] == clean_ids, threshold
    result = run("filter_ngrams.py", *base, "--output", tmp_path / "o.json", "--key-threshold", -1, check=False)
    assert result.returncode == 1 and "--key-threshold -1 must be at least 0" in result.stderr


def test_filter_ngrams_dictionary_round_trip_and_megatron_pickle(tmp_path):
    plants = [(COMMON,)] * 3 + [(RARE,)] * 2 + [(COMMON, RARE)] + [()] * 2
    task, corpus = ngram_corpus(tmp_path, plants)
    data = ["--dedup-dataset", corpus, "text", "--filter-text-char-len", 50, "--remove-char-each-side", 20]
    # Megatron-LM's command line, every flag spelled as it spells it.
    run("filter_ngrams.py", "--tasks", "lambada", "--lambada-path", task, *data, "--output", tmp_path / "one.json",
        "--num-threads", 2, "--max-ngram-size", 13, "--min-ngram-size", 8, "--splits-count", 10,
        "--key-threshold", 10, "--save-dictionary", tmp_path / "d.json")
    one = (tmp_path / "one.json").read_bytes()
    pieces = load(tmp_path / "one.json")  # each planted document split in two around the copy
    assert [r["id"] for r in pieces] == [i for i in range(6) for _ in range(2)] + [6, 7]
    assert not any("fox" in r["text"] or "goats" in r["text"] for r in pieces)
    dictionary = json.loads((tmp_path / "d.json").read_text())
    assert len(dictionary) == 9

    # Saved then loaded: the same output, byte for byte, without --tasks (or with it, not read).
    run("filter_ngrams.py", "--load-dictionary", tmp_path / "d.json", *data, "--output", tmp_path / "two.json")
    assert (tmp_path / "two.json").read_bytes() == one
    # Megatron-LM's pickle ({n-gram: 1}), in its default protocol and in protocol 0.
    for protocol in (pickle.DEFAULT_PROTOCOL, 0):
        megatron = tmp_path / f"megatron_{protocol}.pkl"
        megatron.write_bytes(pickle.dumps({gram: 1 for gram in dictionary}, protocol=protocol))
        run("filter_ngrams.py", "--tasks", "lambada", "--load-dictionary", megatron, *data,
            "--output", tmp_path / "three.json")
        assert (tmp_path / "three.json").read_bytes() == one, protocol


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what a malicious pickle does: unpickling it would call os.system
        return os.system, (f"touch {self.marker}",)


def test_filter_ngrams_refuses_unsafe_or_bad_dictionaries(tmp_path):
    _, corpus = ngram_corpus(tmp_path, [(RARE,)])
    marker = tmp_path / "code_ran"
    for name, table in (("code.pkl", {"a b c": _RunsCode(marker)}),
                        ("ordered.pkl", collections.OrderedDict([("a b c", 1)]))):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(table))
        result = run("filter_ngrams.py", "--load-dictionary", path, "--dedup-dataset", corpus, "text",
                     "--output", tmp_path / "o.json", check=False)
        assert result.returncode == 1 and result.stderr.strip().count("\n") == 0, result.stderr
        assert f"{path}: not a pickled n-gram dictionary" in result.stderr and "Traceback" not in result.stderr
        assert not marker.exists() and not (tmp_path / "o.json").exists()
    for name, content, message in (("list.pkl", pickle.dumps(["a b c"]), "expected a dict of n-gram strings"),
                                   ("keys.pkl", pickle.dumps({1: 1}), "n-gram keys must be strings"),
                                   ("short.pkl", pickle.dumps({"a b c": 1})[:12], "not a pickled n-gram dictionary"),
                                   ("bad.json", b'{"a b c": [', "not a JSON n-gram dictionary")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(WebtextError, match=f"{name}: {message}"):
            ngrams.load_dictionary(str(tmp_path / name))


def test_filter_ngrams_offline_and_missing_tasks_are_one_line(tmp_path):
    _, corpus = ngram_corpus(tmp_path, [(RARE,)])
    output = ["--dedup-dataset", corpus, "text", "--output", tmp_path / "o.json"]
    for tasks, message in ((["lambada", "squad"], "--tasks squad: not available offline"),
                           (["piqa"], "--tasks piqa: not available offline"),
                           (["nosuchtask"], "--tasks nosuchtask: unknown task"),
                           ([], "--tasks is required unless --load-dictionary is given")):
        result = run("filter_ngrams.py", *(["--tasks", *tasks] if tasks else []), *output, check=False)
        assert result.returncode == 1 and result.stderr.strip().count("\n") == 0, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
        if "offline" in message or "unknown" in message:
            assert "lambada (--lambada-path)" in result.stderr  # the supported tasks are listed
    assert not (tmp_path / "o.json").exists()


@pytest.mark.slow
def test_clean_corpus_example(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    env = dict(os.environ, OUT_DIR=str(tmp_path / "out"), NUM_DOCS="2000", WORKERS="2", PYTHON=sys.executable)
    result = subprocess.run(["bash", os.path.join(REPO, "examples", "clean_corpus.sh")], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    final = load(tmp_path / "out" / "final.json")
    dataset = IndexedDataset(str(tmp_path / "out" / "webtext_text_document"))
    assert len(dataset) == len(final) and 1000 < len(final) < 2000
