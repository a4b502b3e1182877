"""Web-text corpus tools (the library behind tools/openwebtext/): URL filtering, cleaning and
language filtering, exact and near-duplicate removal, benchmark decontamination.

Every tool reads and writes loose JSON (one object per line), streams its input in batches
through worker processes with bounded memory, publishes outputs atomically, and reports bad
input as one ``WebtextError`` line naming the file and line.
"""
from .jsonl import WebtextError

__all__ = ["WebtextError"]
