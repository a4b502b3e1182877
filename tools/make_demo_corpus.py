#!/usr/bin/env python
"""Write the bundled demo corpus: real English from the documentation shipped with Python.

No network is needed. The corpus is loose JSON (one object per line, fields ``id``,
``title``, ``text``) built from two sources that every CPython installation carries:

* ``pydoc_data.topics``: the language reference topics (one document per topic);
* the docstrings of the standard library's pure-Python modules, read with ``ast`` from
  their source files (modules are never imported, so nothing runs): one document per
  module, its docstring followed by the docstrings of its public classes and functions.

The output depends only on the Python version, so tests and benchmarks can rely on it.

    python tools/make_demo_corpus.py --output demo/corpus.json
    python tools/make_demo_corpus.py --output bench.json --topics-only --repeat 10
"""
import argparse
import ast
import json
import os
import sys
import sysconfig

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.core.fileio import atomic_open  # noqa: E402

# Modules whose docstrings are mostly code samples, licences or tables, not prose.
_SKIPPED_MODULES = {"this", "antigravity", "__hello__", "__phello__", "idlelib", "lib2to3",
                    "test", "turtledemo", "pydoc_data", "sre_constants", "keyword", "token"}
_MIN_DOC_CHARS = 200


def topic_documents():
    """One document per ``pydoc_data.topics`` entry, in sorted topic order."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        text = topics[name].strip()
        if text:
            yield {"title": name, "text": text}


def _public_docstrings(tree):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if doc:
                yield node.name, doc
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_"):
                        doc = ast.get_docstring(item)
                        if doc:
                            yield f"{node.name}.{item.name}", doc


def _stdlib_sources():
    """(dotted name, path) of the standard library's modules, packages' submodules included."""
    stdlib = sysconfig.get_paths()["stdlib"]
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in _SKIPPED_MODULES:
            continue
        module_file = os.path.join(stdlib, name + ".py")
        package_dir = os.path.join(stdlib, name)
        if os.path.isfile(module_file):
            yield name, module_file
        elif os.path.isfile(os.path.join(package_dir, "__init__.py")):
            for root, dirs, files in os.walk(package_dir):
                dirs[:] = sorted(d for d in dirs if not d.startswith(("_", "test")) and d != "idle_test")
                for file in sorted(files):
                    if not file.endswith(".py") or (file.startswith("_") and file != "__init__.py"):
                        continue
                    relative = os.path.relpath(os.path.join(root, file), stdlib)[:-3].split(os.sep)
                    if relative[-1] == "__init__":
                        relative.pop()
                    yield ".".join(relative), os.path.join(root, file)


def module_documents():
    """One document per pure-Python standard-library module with enough prose."""
    for name, path in _stdlib_sources():
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), filename=path)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        parts = []
        module_doc = ast.get_docstring(tree)
        if module_doc:
            parts.append(module_doc.strip())
        for qualname, doc in _public_docstrings(tree):
            parts.append(f"{qualname}: {doc.strip()}")
        text = "\n\n".join(parts)
        if len(text) >= _MIN_DOC_CHARS:
            yield {"title": name, "text": text}


def iter_documents(topics_only=False, repeat=1):
    """Yield the corpus documents with ids, deterministically."""
    docs = list(topic_documents())
    if not topics_only:
        docs.extend(module_documents())
    doc_id = 0
    for _ in range(repeat):
        for doc in docs:
            yield {"id": doc_id, "title": doc["title"], "text": doc["text"]}
            doc_id += 1


def write_corpus(path, topics_only=False, repeat=1):
    """Write the corpus atomically; returns (documents, bytes)."""
    count = 0
    with atomic_open(path, "w", encoding="utf-8") as f:
        for doc in iter_documents(topics_only=topics_only, repeat=repeat):
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
            count += 1
    return count, os.path.getsize(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="path of the loose-JSON corpus to write")
    parser.add_argument("--topics-only", action="store_true",
                        help="only the pydoc_data.topics documents (the benchmark corpus)")
    parser.add_argument("--repeat", type=int, default=1, help="write the documents this many times")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat} must be at least 1")
    count, size = write_corpus(args.output, topics_only=args.topics_only, repeat=args.repeat)
    print(f"wrote {count} documents, {size / 2**20:.2f} MiB, to {args.output}")


if __name__ == "__main__":
    main()
