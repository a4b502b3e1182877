"""Shared pytest set-up: the repository root on sys.path (for ``tools``), fixtures for data."""
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
    """The bundled demo corpus (loose JSON), written once per test session."""
    from tools.make_demo_corpus import write_corpus

    path = str(tmp_path_factory.mktemp("demo") / "corpus.json")
    write_corpus(path)
    return path
