"""tools/merge_datasets.py end to end: shards of the demo corpus merge into the same bytes
as one dataset written in a single pass."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron.core.datasets.indexed_dataset import (
    IndexedDataset,
    IndexedDatasetBuilder,
    LegacyIndexedDatasetBuilder,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO_ROOT, "tools", "merge_datasets.py")


def run_merge(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, cwd=REPO_ROOT)


def encode(text):
    """Byte-level tokens, one sequence per sentence-ish chunk: enough structure for a merge."""
    chunks = [c for c in text.split(". ") if c]
    return [np.frombuffer(c.encode("utf-8"), dtype=np.uint8).astype(np.uint16) for c in chunks]


def write(prefix, documents, builder_cls=IndexedDatasetBuilder):
    builder = builder_cls(prefix + ".bin", dtype=np.uint16)
    for doc in documents:
        if not doc:
            continue
        builder.add_document(np.concatenate(doc), [len(s) for s in doc])
    builder.finalize(prefix + ".idx")


@pytest.fixture(scope="module")
def documents(demo_corpus):
    with open(demo_corpus, encoding="utf-8") as f:
        return [encode(json.loads(line)["text"]) for line in f]


def test_merge_equals_single_pass(tmp_path, documents):
    shards = tmp_path / "shards"
    shards.mkdir()
    third = len(documents) // 3
    parts = {"shard_a": documents[:third], "shard_b": documents[third:2 * third], "shard_c": documents[2 * third:]}
    # Written b, a, c so that name order, not creation order, must decide; c is a legacy file.
    for name in ("shard_b", "shard_a", "shard_c"):
        write(str(shards / name), parts[name],
              LegacyIndexedDatasetBuilder if name == "shard_c" else IndexedDatasetBuilder)
    write(str(tmp_path / "reference"), documents)

    result = run_merge("--input", str(shards), "--output-prefix", str(tmp_path / "merged"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.rsplit(os.sep, 1)[-1] for line in lines[:3]] == ["shard_a", "shard_b", "shard_c"]
    merged = IndexedDataset(str(tmp_path / "merged"))
    reference = IndexedDataset(str(tmp_path / "reference"))
    assert f"{len(reference)} sequences, {len(reference.doc_idx) - 1} documents" in lines[3]
    for ext in (".bin", ".idx"):
        with open(tmp_path / f"merged{ext}", "rb") as a, open(tmp_path / f"reference{ext}", "rb") as b:
            assert a.read() == b.read(), ext
    assert merged.doc_idx.tolist() == reference.doc_idx.tolist()
    assert sorted(os.listdir(tmp_path)) == ["merged.bin", "merged.idx", "reference.bin", "reference.idx", "shards"]


def test_merge_errors(tmp_path, documents):
    shards = tmp_path / "shards"
    shards.mkdir()
    out = str(tmp_path / "out")

    result = run_merge("--input", str(shards), "--output-prefix", out)
    assert result.returncode == 1 and "contains no .bin/.idx datasets" in result.stderr

    write(str(shards / "a"), documents[:3])
    (shards / "b.bin").write_bytes(b"")
    result = run_merge("--input", str(shards), "--output-prefix", out)
    assert result.returncode == 1 and "b.bin: has no matching .idx file" in result.stderr

    (shards / "b.bin").unlink()
    builder = IndexedDatasetBuilder(str(shards / "b.bin"), dtype=np.int32)
    builder.add_document([1, 2], [2])
    builder.finalize(str(shards / "b.idx"))
    result = run_merge("--input", str(shards), "--output-prefix", out)
    assert result.returncode == 1 and "b.idx: dtype int32 does not match the builder's uint16" in result.stderr
    assert not os.path.exists(out + ".bin") and os.listdir(tmp_path) == ["shards"]

    os.remove(shards / "b.idx")
    os.remove(shards / "b.bin")
    write(str(shards / "b"), documents[3:5])
    os.truncate(shards / "b.bin", 10)
    result = run_merge("--input", str(shards), "--output-prefix", out)
    assert result.returncode == 1 and "b.bin: file is 10 bytes but the index expects" in result.stderr
    assert os.listdir(tmp_path) == ["shards"]

    result = run_merge("--input", str(tmp_path / "nowhere"), "--output-prefix", out)
    assert result.returncode == 1 and "nowhere: not a directory" in result.stderr


def test_merge_refuses_to_read_its_own_output(tmp_path, documents):
    write(str(tmp_path / "a"), documents[:2])
    write(str(tmp_path / "b"), documents[2:4])
    result = run_merge("--input", str(tmp_path), "--output-prefix", str(tmp_path / "b"))
    assert result.returncode == 1 and "is also an input" in result.stderr
