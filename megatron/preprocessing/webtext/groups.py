"""Duplicate pairs -> groups (connected components) -> a corpus keeping one document per group."""
import json
from typing import Dict, Iterator, List, Sequence, Tuple

from .jsonl import WebtextError


class UnionFind:
    def __init__(self):
        self.parent: Dict[str, str] = {}
        self.order: Dict[str, int] = {}  # first appearance, to list groups deterministically

    def _add(self, x: str) -> None:
        if x not in self.parent:
            self.parent[x] = x
            self.order[x] = len(self.order)

    def find(self, x: str) -> str:
        self._add(x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # The earlier-seen root stays the root, so the result does not depend on edge order.
            if self.order[rb] < self.order[ra]:
                ra, rb = rb, ra
            self.parent[rb] = ra

    def groups(self) -> List[List[str]]:
        members: Dict[str, List[str]] = {}
        for x in sorted(self.parent, key=self.order.__getitem__):
            members.setdefault(self.find(x), []).append(x)
        return [g for g in members.values() if len(g) > 1]


def _json_lines(path: str) -> Iterator[Tuple[int, object]]:
    """(line number, parsed JSON) for the non-blank lines of ``path``; errors name the file and line."""
    try:
        handle = open(path, encoding="utf-8")
    except OSError as error:
        raise WebtextError(f"{path}: cannot read: {error.strerror}") from None
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                raise WebtextError(f"{path}:{number}: not JSON: {error.msg}") from None


def read_pairs(path: str) -> Iterator[Tuple[str, str, float]]:
    """(id, other id, jaccard) from find_duplicates' output."""
    for number, record in _json_lines(path):
        if not isinstance(record, dict):
            raise WebtextError(f"{path}:{number}: expected {{id: [[other id, jaccard], ...]}}")
        for doc_id, others in record.items():
            if not isinstance(others, list):
                raise WebtextError(f"{path}:{number}: expected {{id: [[other id, jaccard], ...]}}")
            for item in others:
                if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                        or not isinstance(item[1], (int, float))):
                    raise WebtextError(f"{path}:{number}: each duplicate must be [other id, jaccard], "
                                       f"found {json.dumps(item)[:60]}")
                yield doc_id, item[0], float(item[1])


def group_pairs(pairs: Iterator[Tuple[str, str, float]], threshold: float) -> Tuple[List[List[str]], int]:
    """(groups of two or more ids, number of pairs at or above ``threshold``)."""
    uf = UnionFind()
    used = 0
    for a, b, similarity in pairs:
        if similarity >= threshold:
            uf.union(a, b)
            used += 1
    return uf.groups(), used


def read_groups(path: str) -> List[List[str]]:
    """Groups written by group_duplicate_url: one JSON object per line, ``{group: [ids...]}``."""
    groups = []
    for number, record in _json_lines(path):
        if not isinstance(record, dict) or not all(
                isinstance(v, list) and all(isinstance(x, str) for x in v) for v in record.values()):
            raise WebtextError(f"{path}:{number}: expected {{group: [id, id, ...]}}")
        groups.extend(list(v) for v in record.values())
    return groups


def removal_index(groups: Sequence[Sequence[str]]) -> Dict[str, int]:
    """id -> group number, for every id in a group (an id in two groups joins them)."""
    uf = UnionFind()
    for group in groups:
        for other in group[1:]:
            uf.union(group[0], other)
        if len(group) == 1:
            uf.find(group[0])
    return {x: uf.order[uf.find(x)] for x in uf.parent}
