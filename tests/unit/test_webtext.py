"""The web-text library (megatron/preprocessing/webtext) against independent references:
brute-force Jaccard over all pairs, a dict-based LSH banding, plain set arithmetic."""
import itertools
import json
import os
import random

import numpy as np
import pytest

from megatron.preprocessing.webtext import cleanup, exact, groups, minhash, ngrams, synthetic
from megatron.preprocessing.webtext.jsonl import WebtextError, ordered_map, parse_line, read_batches
from megatron.preprocessing.webtext.urls import UrlFilter

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def sentences():
    from tools.openwebtext.make_noisy_corpus import demo_sentences
    return demo_sentences()


def _write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return str(path)


# ----------------------------------------------------------------------------- reading

def test_parse_line_errors_name_file_and_line(tmp_path):
    with pytest.raises(WebtextError, match=r"^c.json:3: not JSON"):
        parse_line("c.json", 3, b"{broken")
    with pytest.raises(WebtextError, match=r"^c.json:4: key 'text' must hold a string \(no such key\)"):
        parse_line("c.json", 4, b'{"url": "x"}', ("text",))
    with pytest.raises(WebtextError, match=r"c.json:5: expected a JSON object"):
        parse_line("c.json", 5, b"[1, 2]")


def test_read_batches_offsets_and_ordered_map(tmp_path):
    path = _write_jsonl(tmp_path / "a.json", [{"text": f"doc {i}"} for i in range(50)])
    with open(path, "a") as handle:
        handle.write("\n")  # a blank line is skipped
    batches = list(read_batches([path], batch_lines=7))
    lines = [item for _, batch in batches for item in batch]
    assert [n for n, _, _ in lines] == list(range(1, 51))
    with open(path, "rb") as handle:
        for _, offset, raw in lines:
            handle.seek(offset)
            assert handle.readline() == raw
    # Two processes, results in input order.
    assert list(ordered_map(len, (b for _, b in batches), workers=2, in_flight_per_worker=1)) == \
        [len(b) for _, b in batches]


# ----------------------------------------------------------------------------- URLs

def test_url_filter_reasons():
    f = UrlFilter(min_length=10)
    urls = ["https://www.example.org/a", "http://example.org/a/", "https://i.imgur.com/x", "https://e.org/p.JPG",
            "short.io", "https://example.org/b?q=1", "http://", "https://example.org/b?q=2"]
    assert list(f.filter(urls)) == ["https://www.example.org/a", "https://example.org/b?q=1",
                                    "https://example.org/b?q=2"]
    assert f.counts["duplicate"] == 1 and f.counts["domain"] == 1 and f.counts["extension"] == 1
    assert f.counts["too_short"] == 2 and f.counts["kept"] == 3


# ----------------------------------------------------------------------------- cleanup

def test_cleanup_fixes_mojibake_and_filters_language_and_length(sentences):
    config = cleanup.CleanupConfig(min_tokens=40)
    cleanup.init_worker(config)
    english = " ".join(sentences[:12])
    broken = synthetic.mojibake(english)
    assert broken != english and "\u00e2\u20ac" in broken  # "â€" of a curly quote read as cp1252
    records = [{"text": broken}, {"text": " ".join(synthetic.FOREIGN["de"])}, {"text": sentences[0][:60]},
               {"text": english}]
    out, reasons, languages = cleanup.clean_batch(("x.json", [(i + 1, 0, json.dumps(r).encode())
                                                              for i, r in enumerate(records)]))
    kept = [json.loads(line)["text"] for line in out]
    import ftfy
    assert len(kept) == 2 and kept[1] == ftfy.fix_text(english)
    assert "\u00e2\u20ac" not in kept[0] and kept[0] == ftfy.fix_text(english.replace(" - ", " \u2014 "))
    assert reasons["language"] == 1 and languages["de"] == 1 and reasons["too_short"] == 1
    assert reasons["fixed_by_ftfy"] == 1 + (ftfy.fix_text(english) != english)  # curly quotes get straightened


def test_token_count_is_a_lower_bound_of_bpe(tmp_path):
    counter = cleanup.TokenCounter()
    text = "Hello, world! It's 2024 and the answer is 42."
    # GPT-2's pre-tokenizer pieces: Hello , world ! It 's 2024 and the answer is 42 .
    assert counter.count(text, 1000) == 13
    assert counter.count(text, 5) == 5  # stops early at the limit


def test_token_count_with_a_gpt2_vocabulary(tmp_path):
    from megatron.tokenizer.gpt2 import GPT2BPETokenizer, bytes_to_unicode
    merges = [("\u0120", "t"), ("h", "e"), ("\u0120t", "he"), ("i", "s")]
    tokens = list(bytes_to_unicode().values()) + [a + b for a, b in merges] + ["<|endoftext|>"]
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                         encoding="utf-8")
    vocab, merge = str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")
    text = "this is the text, the whole text"
    exact_count = cleanup.TokenCounter(vocab, merge).count(text, 10 ** 6)
    assert exact_count == len(GPT2BPETokenizer(vocab, merge).tokenize(text))
    assert exact_count >= cleanup.TokenCounter().count(text, 10 ** 6)  # the regex count is a lower bound


# ----------------------------------------------------------------------------- exact

def test_exact_normalisation():
    a = "The cat, sat on the MAT.\n\nNext line"
    assert exact.digest(a) == exact.digest(synthetic.exact_variant(a)) == exact.digest("the cat sat on the mat next line")
    assert exact.digest(a) != exact.digest("The cat sat on the hat. Next line")


# ----------------------------------------------------------------------------- MinHash

def test_shingle_hashes_match_shingle_strings(sentences):
    rng = random.Random(0)
    for _ in range(20):
        text = " ".join(rng.sample(sentences, 5))
        strings = minhash.shingle_set(text, 5)
        hashes = minhash.shingle_hashes(text, 5)
        assert abs(len(hashes) - len(strings)) <= 1  # equal up to a rare 32-bit collision
    assert minhash.shingle_set("ab", 5) == {"ab"} and len(minhash.shingle_hashes("ab", 5)) == 1
    assert len(minhash.shingle_hashes("  ", 5)) == 0


def test_minhash_estimate_tracks_exact_jaccard(sentences):
    fp = minhash.Fingerprinter(256, seed=3)
    rng = random.Random(1)
    errors = []
    for fraction in (0.1, 0.3, 0.5, 0.7):
        base = rng.sample(sentences, 20)
        copy = [rng.choice(sentences) if rng.random() < fraction else s for s in base]
        a, b = " ".join(base), " ".join(copy)
        true = minhash.jaccard(minhash.shingle_set(a, 5), minhash.shingle_set(b, 5))
        estimate = float(np.mean(fp(minhash.shingle_hashes(a, 5)) == fp(minhash.shingle_hashes(b, 5))))
        errors.append(abs(estimate - true))
    assert max(errors) < 4 * np.sqrt(0.25 / 256)


def test_candidate_pairs_equal_dict_banding():
    rng = np.random.default_rng(0)
    # 300 documents over few distinct values, so many bands collide, plus a bucket over max_bucket.
    hv = rng.integers(0, 3, size=(300, 12), dtype=np.uint32)
    got = minhash.candidate_pairs(hv, num_bands=4, max_bucket=10_000)
    reference = set()
    for band in range(4):
        buckets = {}
        for doc in range(len(hv)):
            buckets.setdefault(tuple(hv[doc, band * 3:(band + 1) * 3]), []).append(doc)
        for members in buckets.values():
            reference.update(itertools.combinations(members, 2))
    assert set(map(tuple, got.tolist())) == reference
    star = minhash.candidate_pairs(np.zeros((50, 4), np.uint32), num_bands=2, max_bucket=10)
    assert star.tolist() == [[0, j] for j in range(1, 50)]


def test_jaccard_kinds():
    a, b = set("abcd"), set("cdefgh")
    assert minhash.jaccard(a, b) == 2 / 8
    assert minhash.jaccard(a, b, "min") == 2 / 4 and minhash.jaccard(a, b, "max") == 2 / 6
    assert minhash.jaccard(set(), b) == 0.0


def test_config_validation():
    with pytest.raises(WebtextError, match="--num-seeds 100 is not divisible by --num-bands 32"):
        minhash.MinHashConfig(num_seeds=100, num_bands=32)


def test_planted_near_duplicates_recall_and_precision(tmp_path, sentences):
    """Brute force over all pairs gives the truth: every pair with J >= 0.5; the tool must find
    >= 95% of them and report nothing below 0.5 (so nothing below 0.3)."""
    manifest = synthetic.Manifest()
    noise = synthetic.NoiseConfig(near_duplicate=0.25, exact_duplicate=0.0, mojibake=0, foreign=0, short=0,
                                  min_sentences=6, max_sentences=14)
    records = list(synthetic.generate(sentences, 360, seed=5, noise=noise, manifest=manifest))
    path = _write_jsonl(tmp_path / "c.json", records)
    out = str(tmp_path / "pairs.json")
    stats = minhash.find_duplicates([(path, "url")], out, minhash.MinHashConfig(), threshold=0.5, workers=2)
    reported = {}
    for line in open(out):
        for doc, others in json.loads(line).items():
            for other, similarity in others:
                reported[(doc, other)] = similarity
    shingles = [minhash.shingle_set(r["text"], 5) for r in records]
    truth = {}
    for i, j in itertools.combinations(range(len(records)), 2):
        similarity = minhash.jaccard(shingles[i], shingles[j])
        if similarity >= 0.5:
            truth[(records[i]["url"], records[j]["url"])] = similarity
    planted = {(a, b) for a, b, _ in manifest.near_duplicates}
    assert len(truth) >= 40 and len(planted & set(truth)) >= 30  # the corpus has pairs across the range
    assert set(reported) <= set(truth)  # exact verification: nothing below the threshold
    for pair, similarity in reported.items():
        assert similarity == pytest.approx(truth[pair], abs=1e-6)
    assert len(set(reported) & set(truth)) / len(truth) >= 0.95
    assert stats["checked"] <= stats["candidates"]


def test_fingerprints_save_load_and_duplicate_ids(tmp_path):
    records = [{"url": f"u{i}", "text": f"some text number {i} " * 20} for i in range(20)]
    path = _write_jsonl(tmp_path / "c.json", records)
    config = minhash.MinHashConfig(num_seeds=32, num_bands=8)
    fp = minhash.fingerprint_files([(path, "url")], config, workers=1)
    fp.save(str(tmp_path / "fp.npz"))
    loaded = minhash.Fingerprints.load(str(tmp_path / "fp.npz"), config)
    assert loaded.ids == fp.ids and np.array_equal(loaded.hashvalues, fp.hashvalues)
    with pytest.raises(WebtextError, match="fingerprints made with"):
        minhash.Fingerprints.load(str(tmp_path / "fp.npz"), minhash.MinHashConfig(num_seeds=64, num_bands=8))
    doubled = minhash.Fingerprints.concatenate([fp, loaded], fp.config)
    with pytest.raises(WebtextError, match=r"c.json:1: id 'u0' was already used at .*c.json:1"):
        minhash.check_unique_ids(doubled)


# ----------------------------------------------------------------------------- groups

def test_union_find_groups_and_removal_index():
    pairs = [("a", "b", 0.9), ("c", "d", 0.6), ("b", "e", 0.8), ("f", "g", 0.4)]
    found, used = groups.group_pairs(iter(pairs), 0.5)
    assert found == [["a", "b", "e"], ["c", "d"]] and used == 3
    index = groups.removal_index([["a", "b"], ["b", "c"], ["x", "y"]])
    assert index["a"] == index["b"] == index["c"] != index["x"] == index["y"]


# ----------------------------------------------------------------------------- n-grams

def _ngrams(text, n=13):
    w = ngrams.words(text)
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


def test_task_readers_use_the_task_formats():
    data = os.path.join(REPO, "tests", "data")
    lambada = ngrams.task_texts("lambada", [os.path.join(data, "lambada_sample.jsonl")])
    race = ngrams.task_texts("race", [os.path.join(data, "race", "dev")])
    mnli = ngrams.task_texts("mnli", [os.path.join(data, "glue", "MNLI", "dev_matched.tsv")])
    wiki = ngrams.task_texts("wikitext103", [os.path.join(data, "wikitext_sample.txt")])
    assert lambada and race and mnli and len(wiki) == 1
    assert "@-@" not in wiki[0]  # detokenized as the evaluation does
    with pytest.raises(WebtextError, match="no such file"):
        ngrams.task_texts("race", [os.path.join(data, "missing")])


def test_filter_removes_every_planted_ngram_and_keeps_order(sentences):
    rng = random.Random(2)
    tasks = {"lambada": ngrams.task_texts("lambada", [os.path.join(REPO, "tests", "data", "lambada_sample.jsonl")])}
    index = ngrams.build_index(tasks, 13, 8)
    config = ngrams.FilterConfig(remove_char_each_side=50, filter_text_char_len=100)
    ngrams.init_worker(index, config)
    records, planted = [], 0
    for i in range(60):
        body = rng.sample(sentences, 12)
        if i % 3 == 0:
            # Punctuation and case changed: still found.
            body.insert(6, rng.choice(tasks["lambada"]).upper().replace(" ", "  ", 3) + ".")
            planted += 1
        records.append({"id": i, "text": " ".join(body)})
    out, counts = ngrams.filter_batch(("c.json", [(i + 1, 0, json.dumps(r).encode()) for i, r in enumerate(records)]))
    task_grams = set().union(*(_ngrams(t) for t in tasks["lambada"]))
    kept = [json.loads(line) for line in out]
    for record in kept:
        assert not (_ngrams(record["text"]) & task_grams)
    assert counts["lambada:documents"] == planted and counts["split"] == planted
    assert [r["id"] for r in kept if r["id"] % 3] == [i for i in range(60) if i % 3]  # clean ones in order
    clean = {r["id"]: r["text"] for r in records if r["id"] % 3}
    assert all(r["text"] == clean[r["id"]] for r in kept if r["id"] % 3)


def test_short_examples_match_whole_and_split_pieces():
    index = ngrams.build_index({"t": ["one two three four five six seven eight nine"]}, 13, 8)
    assert index.lengths == [9]
    text = "alpha beta " * 30 + "One, two three four five six seven eight nine!" + " gamma delta" * 30
    matches = ngrams.find_matches(text, index)
    assert len(matches) == 1 and text[matches[0][0]:matches[0][1]].startswith("One")
    pieces = ngrams.split_text(text, matches, ngrams.FilterConfig(remove_char_each_side=10, filter_text_char_len=50))
    assert len(pieces) == 2 and all("nine" not in p and "One" not in p for p in pieces)
    assert pieces[0].startswith("alpha") and pieces[1].endswith("delta")


def test_estimate_and_prefilter_follow_the_kind(sentences):
    rng = random.Random(4)
    base = " ".join(rng.sample(sentences, 20))
    texts = [base, base + " " + " ".join(rng.sample(sentences, 20)), " ".join(rng.sample(sentences, 20))]
    config = minhash.MinHashConfig(num_seeds=256, num_bands=64)
    fingerprint = minhash.Fingerprinter(config.num_seeds, config.seed)
    hashes = [minhash.shingle_hashes(t, 5) for t in texts]
    fp = minhash.Fingerprints([], [str(i) for i in range(3)], np.zeros(3, np.int32), np.zeros(3, np.int64),
                              np.zeros(3, np.int64), np.stack([fingerprint(h) for h in hashes]),
                              np.array([len(h) for h in hashes], np.int32), {})
    pairs = np.array([[0, 1], [0, 2]])
    sets = [minhash.shingle_set(t, 5) for t in texts]
    for kind in minhash.JACCARD_KINDS:
        estimate = minhash.estimated_similarity(fp, pairs, kind)
        exact_values = [minhash.jaccard(sets[i], sets[j], kind) for i, j in pairs]
        assert np.allclose(estimate, exact_values, atol=0.12), (kind, estimate, exact_values)
    # The first text is contained in the second: about 1 under "min", about 0.5 under "union".
    assert minhash.prefilter(fp, pairs, 0.9, 0.15, "min").tolist() == [[0, 1]]
    assert minhash.prefilter(fp, pairs, 0.9, 0.15, "union").tolist() == []
    assert minhash.prefilter(fp, pairs, 0.9, -1, "union").tolist() == pairs.tolist()


def test_too_many_regions_drop_the_document():
    index = ngrams.build_index({"t": ["one two three four five six seven eight nine ten"]}, 13, 8)
    copy = "one two three four five six seven eight nine ten"
    text = " filler words here ".join([copy] * 4)
    record = json.dumps({"text": text}).encode()
    ngrams.init_worker(index, ngrams.FilterConfig(splits_count=3, filter_text_char_len=1))
    out, counts = ngrams.filter_batch(("c.json", [(1, 0, record)]))
    assert out == [] and counts["removed"] == 1 and counts["t:matches"] == 4
    ngrams.init_worker(index, ngrams.FilterConfig(splits_count=4, remove_char_each_side=0, filter_text_char_len=1))
    out, counts = ngrams.filter_batch(("c.json", [(1, 0, record)]))
    assert [json.loads(line)["text"] for line in out] == ["filler words here"] * 3 and counts["split"] == 1
