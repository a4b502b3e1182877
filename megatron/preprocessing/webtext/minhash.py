"""Near-duplicate detection: MinHash over character shingles, LSH banding, exact verification.

1. **Shingles.** A document's text is lower-cased with whitespace runs collapsed to one space;
   its shingles are all substrings of ``char_ngram`` characters (the whole text if shorter).
2. **Fingerprints** (multi-process, streamed). Each shingle gets a 32-bit hash (a polynomial
   hash of its code points, vectorised in numpy, then mixed); ``datasketch.MinHash`` (scheme
   ``affine32``) turns the set of hashes into ``num_seeds`` minimum values. One fingerprint is
   ``4 * num_seeds`` bytes; texts are never held, only their file offsets.
3. **Bands.** The values split into ``num_bands`` bands of ``num_seeds / num_bands`` rows; two
   documents are candidates when all rows of some band agree, which happens with probability
   ``1 - (1 - J**r)**b`` for Jaccard similarity J. The bands are hashed and sorted with numpy
   rather than inserted into ``datasketch.MinHashLSH``: a sort of N 64-bit keys per band finds
   every bucket at once, with no Python object per document and band (benchmarks/RESULTS.md
   has the measured difference). A bucket larger than ``max_bucket`` pairs each member with
   its first member only (a star, enough for the connected components grouping builds).
4. **Verification.** Candidates whose MinHash estimate is far below the threshold (by more than
   ``estimate_margin``; see ``prefilter``) are skipped. Each remaining pair is re-read from its file and its exact Jaccard
   similarity computed on the two shingle *string* sets; pairs below the threshold are
   dropped, so MinHash only decides which pairs are looked at, never which are reported.
"""
import collections
import io
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from megatron.core.fileio import atomic_open

from .jsonl import WebtextError, byte_progress, ordered_map, parse_line, read_batches

JACCARD_KINDS = ("union", "min", "max")
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass
class MinHashConfig:
    num_seeds: int = 128
    num_bands: int = 32
    char_ngram: int = 5
    seed: int = 1234
    text_key: str = "text"

    def __post_init__(self):
        if self.num_seeds < 1 or self.num_bands < 1:
            raise WebtextError(f"--num-seeds {self.num_seeds} and --num-bands {self.num_bands} must be at least 1")
        if self.num_seeds % self.num_bands:
            raise WebtextError(f"--num-seeds {self.num_seeds} is not divisible by --num-bands {self.num_bands}")
        if self.char_ngram < 1:
            raise WebtextError(f"--char-ngram {self.char_ngram} must be at least 1")

    @property
    def rows(self) -> int:
        return self.num_seeds // self.num_bands

    def candidate_probability(self, jaccard: float) -> float:
        return 1.0 - (1.0 - jaccard ** self.rows) ** self.num_bands


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def shingle_set(text: str, char_ngram: int) -> set:
    """The exact shingles (strings) of a text, as used for verification."""
    text = normalise(text)
    if len(text) <= char_ngram:
        return {text} if text else set()
    return {text[i:i + char_ngram] for i in range(len(text) - char_ngram + 1)}


def shingle_hashes(text: str, char_ngram: int) -> np.ndarray:
    """Unique 32-bit hashes of ``shingle_set(text)`` (uint32), computed without Python loops per shingle."""
    text = normalise(text)
    if not text:
        return np.zeros(0, dtype=np.uint32)
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    n = min(char_ngram, len(points))
    count = len(points) - n + 1
    with np.errstate(over="ignore"):
        h = np.zeros(count, dtype=np.uint64)
        for k in range(n):  # Horner's rule over the window, wrapping mod 2**64
            h = h * np.uint64(0x100000001B3) + points[k:k + count] + np.uint64(1)
        # splitmix64 finaliser: every input bit reaches the high 32 bits kept below
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return np.unique((h >> np.uint64(32)).astype(np.uint32))


class Fingerprinter:
    def __init__(self, num_seeds: int, seed: int):
        from datasketch import MinHash
        self._minhash = MinHash
        self.num_seeds = num_seeds
        self.seed = seed
        self._permutations = MinHash(num_seeds, seed=seed, scheme="affine32").permutations

    def __call__(self, hashes: np.ndarray) -> np.ndarray:
        sketch = self._minhash(self.num_seeds, seed=self.seed, hashfunc=int, scheme="affine32",
                               permutations=self._permutations)
        sketch.update_batch(hashes.tolist())
        return np.asarray(sketch.hashvalues, dtype=np.uint32)


# ----------------------------------------------------------------------------- fingerprint store

@dataclass
class Fingerprints:
    """Per document: id, where its line is (file index, byte offset, line number), its MinHash values."""
    files: List[Tuple[str, str, int]]  # (path, text key, size in bytes when fingerprinted)
    ids: List[str]
    file_index: np.ndarray  # int32 [N]
    offsets: np.ndarray  # int64 [N]
    lines: np.ndarray  # int64 [N]
    hashvalues: np.ndarray  # uint32 [N, num_seeds]; documents without text are left out
    sizes: np.ndarray  # int32 [N]: distinct shingle hashes, to turn a Jaccard estimate into min/max kinds
    config: dict

    def __len__(self):
        return len(self.ids)

    def save(self, path: str) -> None:
        meta = json.dumps({"files": self.files, "config": self.config}).encode()
        with atomic_open(path, "wb") as handle:
            np.savez(handle, meta=np.frombuffer(meta, dtype=np.uint8),
                     ids=np.frombuffer("\n".join(self.ids).encode("utf-8"), dtype=np.uint8),
                     file_index=self.file_index, offsets=self.offsets, lines=self.lines, hashvalues=self.hashvalues,
                     sizes=self.sizes)

    @staticmethod
    def load(path: str, config: "MinHashConfig") -> "Fingerprints":
        try:
            with np.load(path) as data:
                meta = json.loads(data["meta"].tobytes())
                ids_blob = data["ids"].tobytes().decode("utf-8")
                arrays = {k: data[k] for k in ("file_index", "offsets", "lines", "hashvalues", "sizes")}
        except (OSError, ValueError, KeyError) as error:
            raise WebtextError(f"{path}: not a fingerprint file written by --save-fingerprints ({error})") from None
        want = {k: v for k, v in asdict(config).items() if k != "text_key"}
        got = {k: meta["config"].get(k) for k in want}
        if got != want:
            raise WebtextError(f"{path}: fingerprints made with {got}, this run uses {want}")
        for file_path, _, size in meta["files"]:
            if not os.path.isfile(file_path) or os.path.getsize(file_path) != size:
                raise WebtextError(f"{path}: its input {file_path} is missing or changed since it was fingerprinted "
                                   f"(pairs are verified by re-reading the documents)")
        ids = ids_blob.split("\n") if len(arrays["lines"]) else []
        return Fingerprints([tuple(f) for f in meta["files"]], ids, **arrays, config=meta["config"])

    @staticmethod
    def concatenate(parts: Sequence["Fingerprints"], config: dict) -> "Fingerprints":
        files, ids, file_index = [], [], []
        for part in parts:
            file_index.append(part.file_index + len(files))
            files.extend(part.files)
            ids.extend(part.ids)
        num_seeds = config["num_seeds"]
        return Fingerprints(
            files, ids,
            np.concatenate(file_index) if parts else np.zeros(0, np.int32),
            np.concatenate([p.offsets for p in parts]) if parts else np.zeros(0, np.int64),
            np.concatenate([p.lines for p in parts]) if parts else np.zeros(0, np.int64),
            np.concatenate([p.hashvalues for p in parts]) if parts else np.zeros((0, num_seeds), np.uint32),
            np.concatenate([p.sizes for p in parts]) if parts else np.zeros(0, np.int32),
            config)


_worker: Optional[dict] = None


def _init_fingerprint_worker(config: MinHashConfig, id_keys: Dict[str, str]) -> None:
    global _worker
    _worker = {"config": config, "id_keys": id_keys, "fp": Fingerprinter(config.num_seeds, config.seed)}


def _fingerprint_batch(batch):
    path, lines = batch
    config, fingerprinter = _worker["config"], _worker["fp"]
    id_key = _worker["id_keys"][path]
    out_ids, out_lines, out_offsets, values, sizes = [], [], [], [], []
    for number, offset, raw in lines:
        record = parse_line(path, number, raw, (config.text_key,))
        doc_id = record.get(id_key)
        if not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool):
            raise WebtextError(f"{path}:{number}: id key {id_key!r} must hold a string or an integer")
        hashes = shingle_hashes(record[config.text_key], config.char_ngram)
        if not len(hashes):
            continue  # no text, nothing to compare
        out_ids.append(str(doc_id))
        out_lines.append(number)
        out_offsets.append(offset)
        values.append(fingerprinter(hashes))
        sizes.append(len(hashes))
    matrix = np.stack(values) if values else np.zeros((0, config.num_seeds), np.uint32)
    return path, out_ids, out_lines, out_offsets, matrix, sizes


def fingerprint_files(inputs: Sequence[Tuple[str, str]], config: MinHashConfig, workers: int) -> Fingerprints:
    """Fingerprints of every document of ``inputs`` ((path, id key) pairs), in input order."""
    paths = [p for p, _ in inputs]
    if len(set(paths)) != len(paths):
        raise WebtextError("--inputs names a file twice")
    index = {p: i for i, p in enumerate(paths)}
    ids, file_index, lines, offsets, values, sizes = [], [], [], [], [], []
    with byte_progress(paths, "fingerprints") as progress:
        for path, b_ids, b_lines, b_offsets, matrix, b_sizes in ordered_map(
                _fingerprint_batch, read_batches(paths, 256, progress), workers,
                initializer=_init_fingerprint_worker, initargs=(config, dict(inputs))):
            ids.extend(b_ids)
            file_index.extend([index[path]] * len(b_ids))
            lines.extend(b_lines)
            offsets.extend(b_offsets)
            values.append(matrix)
            sizes.extend(b_sizes)
    return Fingerprints([(p, config.text_key, os.path.getsize(p)) for p in paths], ids,
                        np.asarray(file_index, np.int32), np.asarray(offsets, np.int64),
                        np.asarray(lines, np.int64),
                        np.concatenate(values) if values else np.zeros((0, config.num_seeds), np.uint32),
                        np.asarray(sizes, np.int32), {k: v for k, v in asdict(config).items() if k != "text_key"})


def check_unique_ids(fp: Fingerprints) -> None:
    first: Dict[str, int] = {}
    for i, doc_id in enumerate(fp.ids):
        j = first.setdefault(doc_id, i)
        if j != i:
            where = [f"{fp.files[fp.file_index[k]][0]}:{fp.lines[k]}" for k in (j, i)]
            raise WebtextError(f"{where[1]}: id {doc_id!r} was already used at {where[0]}; ids must be unique "
                               f"(pairs and groups name documents by id)")


# ----------------------------------------------------------------------------- LSH candidates

def band_keys(hashvalues: np.ndarray, num_bands: int, seed: int = 0) -> np.ndarray:
    """[num_bands, N] uint64: one hash of each band's rows per document."""
    n, num_seeds = hashvalues.shape
    rows = num_seeds // num_bands
    rng = np.random.default_rng(seed)
    multipliers = rng.integers(1, 2 ** 63, size=rows, dtype=np.uint64) | np.uint64(1)
    keys = np.empty((num_bands, n), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in range(num_bands):
            block = hashvalues[:, band * rows:(band + 1) * rows].astype(np.uint64)
            h = np.full(n, np.uint64(band + 1) * np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64)
            for r in range(rows):
                h = (h ^ block[:, r]) * multipliers[r]
                h ^= h >> np.uint64(29)
            keys[band] = h
    return keys


def candidate_pairs(hashvalues: np.ndarray, num_bands: int, max_bucket: int = 200) -> np.ndarray:
    """[M, 2] int64 document index pairs (i < j), unique, sorted, sharing at least one band."""
    n = len(hashvalues)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    keys = band_keys(hashvalues, num_bands)
    encoded = []
    for band in range(num_bands):
        order = np.argsort(keys[band], kind="stable")
        sorted_keys = keys[band][order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        sizes = np.diff(np.r_[starts, n])
        pairs = []
        # Buckets of two, the common case, in one vectorised step.
        two = starts[sizes == 2]
        if len(two):
            pairs.append(np.stack([order[two], order[two + 1]], axis=1))
        for start, size in zip(starts[sizes > 2], sizes[sizes > 2]):
            members = np.sort(order[start:start + size])
            if size <= max_bucket:
                i, j = np.triu_indices(size, k=1)
                pairs.append(np.stack([members[i], members[j]], axis=1))
            else:
                pairs.append(np.stack([np.full(size - 1, members[0]), members[1:]], axis=1))
        if pairs:
            both = np.concatenate(pairs).astype(np.int64)
            lo, hi = both.min(axis=1), both.max(axis=1)
            encoded.append(np.unique(lo * n + hi))
    if not encoded:
        return np.zeros((0, 2), np.int64)
    codes = np.unique(np.concatenate(encoded))
    return np.stack([codes // n, codes % n], axis=1)


def estimated_similarity(fp: Fingerprints, pairs: np.ndarray, kind: str = "union", chunk: int = 65536) -> np.ndarray:
    """MinHash estimate of each pair's similarity: the share of equal values estimates the union
    Jaccard u; for the min/max kinds the intersection u (|A| + |B|) / (1 + u) is divided by the
    smaller/larger shingle count."""
    out = np.empty(len(pairs), dtype=np.float64)
    for s in range(0, len(pairs), chunk):
        i, j = pairs[s:s + chunk, 0], pairs[s:s + chunk, 1]
        u = (fp.hashvalues[i] == fp.hashvalues[j]).mean(axis=1)
        if kind != "union":
            a, b = fp.sizes[i].astype(np.float64), fp.sizes[j].astype(np.float64)
            inter = u * (a + b) / (1.0 + u)
            u = np.minimum(1.0, inter / (np.minimum(a, b) if kind == "min" else np.maximum(a, b)))
        out[s:s + chunk] = u
    return out


def prefilter(fp: Fingerprints, pairs: np.ndarray, threshold: float, margin: float, kind: str = "union") -> np.ndarray:
    """The candidates worth an exact check: estimate at least ``threshold - margin``. The estimate from
    n values has standard deviation sqrt(J (1 - J) / n), 0.044 at J = 0.5 and n = 128, so the default
    margin 0.15 (3.4 deviations) loses about 3 in 10,000 pairs at the threshold while skipping the bulk
    of band collisions between merely similar texts (J ~ 0.1 for documents on one topic)."""
    if margin < 0 or not len(pairs):
        return pairs
    return pairs[estimated_similarity(fp, pairs, kind) >= threshold - margin]


# ----------------------------------------------------------------------------- verification

def jaccard(a: set, b: set, kind: str = "union") -> float:
    if not a or not b:
        return 0.0
    inter = len(a & b) if len(a) < len(b) else len(b & a)
    if kind == "union":
        return inter / (len(a) + len(b) - inter)
    if kind == "min":
        return inter / min(len(a), len(b))
    return inter / max(len(a), len(b))


class _ShingleCache:
    """Shingle sets of recently used documents, re-read from their files by offset."""

    def __init__(self, fp: Fingerprints, char_ngram: int, capacity: int = 256):
        self.fp, self.char_ngram, self.capacity = fp, char_ngram, capacity
        self.handles: Dict[int, io.BufferedReader] = {}
        self.cache: "collections.OrderedDict[int, set]" = collections.OrderedDict()

    def get(self, doc: int) -> set:
        hit = self.cache.get(doc)
        if hit is not None:
            self.cache.move_to_end(doc)
            return hit
        f = int(self.fp.file_index[doc])
        path, text_key, _ = self.fp.files[f]
        handle = self.handles.get(f)
        if handle is None:
            handle = self.handles[f] = open(path, "rb")
        handle.seek(int(self.fp.offsets[doc]))
        record = parse_line(path, int(self.fp.lines[doc]), handle.readline(), (text_key,))
        shingles = shingle_set(record[text_key], self.char_ngram)
        self.cache[doc] = shingles
        if len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        return shingles


_verify: Optional[dict] = None


def _init_verify_worker(fp: Fingerprints, char_ngram: int, kind: str, threshold: float) -> None:
    global _verify
    _verify = {"cache": _ShingleCache(fp, char_ngram), "kind": kind, "threshold": threshold}


def _verify_chunk(pairs: np.ndarray) -> List[Tuple[int, int, float]]:
    cache, kind, threshold = _verify["cache"], _verify["kind"], _verify["threshold"]
    kept = []
    for i, j in pairs.tolist():
        similarity = jaccard(cache.get(i), cache.get(j), kind)
        if similarity >= threshold:
            kept.append((i, j, similarity))
    return kept


def verify_pairs(fp: Fingerprints, pairs: np.ndarray, char_ngram: int, kind: str, threshold: float,
                 workers: int, chunk: int = 2000) -> Iterator[Tuple[int, int, float]]:
    """The candidate pairs whose exact Jaccard similarity is at least ``threshold``, in pair order."""
    from tqdm import tqdm

    chunks = (pairs[s:s + chunk] for s in range(0, len(pairs), chunk))
    with tqdm(total=len(pairs), unit=" pairs", desc="verify", disable=None) as progress:
        for kept in ordered_map(_verify_chunk, chunks, workers, initializer=_init_verify_worker,
                                initargs=(fp, char_ngram, kind, threshold)):
            progress.update(min(chunk, progress.total - progress.n))
            yield from kept


def write_pairs(path: str, fp: Fingerprints, verified: Iterator[Tuple[int, int, float]]) -> int:
    """Megatron's pairs format: one JSON object per line, ``{id: [[other id, jaccard], ...]}``,
    grouped by the earlier document of each pair (input order)."""
    count = 0
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as handle:
        current, others = None, []
        for i, j, similarity in verified:
            if i != current:
                if others:
                    handle.write(json.dumps({fp.ids[current]: others}, ensure_ascii=False) + "\n")
                current, others = i, []
            others.append([fp.ids[j], round(similarity, 6)])
            count += 1
        if others:
            handle.write(json.dumps({fp.ids[current]: others}, ensure_ascii=False) + "\n")
    return count


def find_duplicates(inputs: Sequence[Tuple[str, str]], output: str, config: MinHashConfig, threshold: float = 0.5,
                    kind: str = "union", workers: int = 1, save_fingerprints: Optional[str] = None,
                    load_fingerprints: Sequence[str] = (), max_bucket: int = 200,
                    estimate_margin: float = 0.15) -> dict:
    """The whole pass; returns counts and seconds per stage."""
    stats, t0 = {}, time.perf_counter()
    parts = [Fingerprints.load(p, config) for p in load_fingerprints]
    if inputs:
        parts.append(fingerprint_files(inputs, config, workers))
    fp = Fingerprints.concatenate(parts, {k: v for k, v in asdict(config).items() if k != "text_key"})
    check_unique_ids(fp)
    stats["documents"] = len(fp)
    stats["fingerprint_s"] = time.perf_counter() - t0
    if save_fingerprints:
        fp.save(save_fingerprints)
    t1 = time.perf_counter()
    pairs = candidate_pairs(fp.hashvalues, config.num_bands, max_bucket)
    stats["candidates"] = len(pairs)
    pairs = prefilter(fp, pairs, threshold, estimate_margin, kind)
    stats["checked"] = len(pairs)
    stats["lsh_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    stats["pairs"] = write_pairs(output, fp, verify_pairs(fp, pairs, config.char_ngram, kind, threshold, workers))
    stats["verify_s"] = time.perf_counter() - t2
    return stats
