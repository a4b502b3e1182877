"""Sentence splitting for ``--split-sentences`` with NLTK's Punkt, working offline.

Where NLTK's trained Punkt data is installed (``punkt_tab`` for NLTK 3.9+, the ``punkt``
pickle for older versions) it is used as Megatron-LM uses it. Where it is not (it cannot
be downloaded here), a Punkt model is trained with NLTK's own unsupervised trainer on a
sample of the input itself, announced once, and cached as JSON next to the output so a
second run over the same input reuses it.

NLTK's top-level package imports SciPy and costs over a second; only the Punkt module is
needed, so it is loaded without running ``nltk/__init__.py`` when NLTK is not imported yet.
"""
import hashlib
import importlib
import importlib.util
import json
import os
import sys
import types

from megatron.core.fileio import atomic_write_text

# Current Megatron splits texts longer than this before Punkt to bound its memory use.
MAX_PUNKT_CHARS = 1_000_000
# How much input text trains a Punkt model when no trained one is installed.
PUNKT_TRAINING_CHARS = 1_000_000
PUNKT_CACHE_VERSION = 1


_NLTK_MODULES = {}


def _nltk_modules():
    """``nltk.tokenize.punkt`` and ``nltk.data`` without NLTK's heavy package initialisation.

    When NLTK is not imported yet, its two packages are replaced by empty stand-ins while
    these modules load, and every module loaded that way is then taken out of
    ``sys.modules`` again: the objects stay usable here, and a later ``import nltk``
    elsewhere loads the real package from scratch, consistently.
    """
    if _NLTK_MODULES:
        return _NLTK_MODULES
    if importlib.util.find_spec("nltk") is None:
        raise ImportError("--split-sentences needs NLTK: pip install nltk")
    if "nltk" in sys.modules:
        _NLTK_MODULES["data"] = importlib.import_module("nltk.data")
        _NLTK_MODULES["punkt"] = importlib.import_module("nltk.tokenize.punkt")
        return _NLTK_MODULES
    try:
        for name in ("nltk", "nltk.tokenize"):
            package_spec = importlib.util.find_spec(name)
            stub = types.ModuleType(name)
            stub.__path__ = list(package_spec.submodule_search_locations)
            stub.__spec__ = package_spec
            stub.__file__ = package_spec.origin
            sys.modules[name] = stub
        _NLTK_MODULES["data"] = importlib.import_module("nltk.data")
        _NLTK_MODULES["punkt"] = importlib.import_module("nltk.tokenize.punkt")
    finally:
        for name in [m for m in sys.modules if m == "nltk" or m.startswith("nltk.")]:
            del sys.modules[name]
    return _NLTK_MODULES


def _import_punkt():
    return _nltk_modules()["punkt"]


def _installed_punkt_parameters(punkt, lang):
    """The trained Punkt parameters NLTK has installed for ``lang``, or None.

    The resource is looked up in ``nltk.data.path`` directly: ``nltk.data.find`` may import
    the whole NLTK package (and SciPy) to consult its dataset registry.
    """
    for root in _nltk_modules()["data"].path:
        tab_dir = os.path.join(root, "tokenizers", "punkt_tab", lang)
        if os.path.isdir(tab_dir) and hasattr(punkt, "load_punkt_params"):
            # NLTK >= 3.9: the tab-separated ``punkt_tab`` resource.
            return punkt.load_punkt_params(tab_dir)
        pickle_path = os.path.join(root, "tokenizers", "punkt", f"{lang}.pickle")
        if os.path.isfile(pickle_path):
            import pickle

            with open(pickle_path, "rb") as f:
                return pickle.load(f)._params
    return None


def _params_to_json(params, fingerprint, lang):
    return {
        "version": PUNKT_CACHE_VERSION,
        "lang": lang,
        "fingerprint": fingerprint,
        "abbrev_types": sorted(params.abbrev_types),
        "collocations": sorted([list(c) for c in params.collocations]),
        "sent_starters": sorted(params.sent_starters),
        "ortho_context": sorted([k, v] for k, v in params.ortho_context.items()),
    }


def _params_from_json(punkt, obj):
    params = punkt.PunktParameters()
    params.abbrev_types = set(obj["abbrev_types"])
    params.collocations = {tuple(c) for c in obj["collocations"]}
    params.sent_starters = set(obj["sent_starters"])
    for key, value in obj["ortho_context"]:
        params.ortho_context[key] = value
    return params


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def train_punkt_parameters(punkt, sample_text):
    trainer = punkt.PunktTrainer()
    trainer.train(sample_text, finalize=True)
    return trainer.get_params()


def load_or_train_punkt(lang, sample_text_fn, cache_path, log=print):
    """Return Punkt parameters: installed ones, else cached, else trained on the input.

    ``sample_text_fn`` is called only when training may be needed; it returns the text
    to train on. ``cache_path`` is where a trained model is kept (JSON).
    Returns ``(params, source)`` where source says where the model came from.
    """
    punkt = _import_punkt()
    params = _installed_punkt_parameters(punkt, lang)
    if params is not None:
        return params, f"NLTK punkt data ({lang})"
    sample = sample_text_fn()
    fingerprint = hashlib.sha1(sample.encode("utf-8", "surrogatepass")).hexdigest()
    cached = _read_json(cache_path) if cache_path else None
    if (cached and cached.get("version") == PUNKT_CACHE_VERSION and cached.get("lang") == lang
            and cached.get("fingerprint") == fingerprint):
        return _params_from_json(punkt, cached), f"cached Punkt model {cache_path}"
    log(f"NLTK punkt data for '{lang}' is not installed (and cannot be downloaded): training a "
        f"Punkt model on {len(sample):,} characters of the input"
        + (f", cached in {cache_path}" if cache_path else ""))
    params = train_punkt_parameters(punkt, sample)
    if cache_path:
        atomic_write_text(cache_path, json.dumps(_params_to_json(params, fingerprint, lang)))
    return params, "Punkt model trained on the input"


class SentenceSplitter:
    """Splits text into sentences with a Punkt model (picklable: carries plain parameters).

    With ``keep_newlines`` each sentence keeps the whitespace (newlines included) that
    follows it up to the next sentence, as Megatron's ``--keep-newlines`` does, so joining
    the sentences gives back the text.
    """

    ENGINES = ("fast", "nltk")

    def __init__(self, params, keep_newlines=False, engine="fast"):
        if engine not in self.ENGINES:
            raise ValueError(f"unknown Punkt engine {engine!r}; expected one of {self.ENGINES}")
        self.params = params
        self.keep_newlines = keep_newlines
        self.engine = engine
        self._tokenizer = None

    def __getstate__(self):
        # Plain data, not NLTK's classes: those may live outside sys.modules (see above).
        return {"params": _params_to_json(self.params, None, None), "keep_newlines": self.keep_newlines,
                "engine": self.engine}

    def __setstate__(self, state):
        self.__init__(_params_from_json(_import_punkt(), state["params"]), state["keep_newlines"],
                      state["engine"])

    def _punkt(self):
        if self._tokenizer is None:
            punkt = _import_punkt()
            if self.engine == "fast":
                from megatron.preprocessing.punkt_fast import FastPunktSplitter

                self._tokenizer = FastPunktSplitter(self.params, punkt)
            else:
                self._tokenizer = punkt.PunktSentenceTokenizer(self.params)
        return self._tokenizer

    def _chunks(self, text):
        if len(text) <= MAX_PUNKT_CHARS:
            yield 0, text
            return
        start = 0
        while start < len(text):
            end = min(len(text), start + MAX_PUNKT_CHARS)
            if end < len(text):
                # Cut at the last newline (or space) of the window so no word is broken.
                cut = max(text.rfind("\n", start, end), text.rfind(" ", start, end))
                if cut > start:
                    end = cut + 1
            yield start, text[start:end]
            start = end

    def split(self, text):
        tokenizer = self._punkt()
        sentences = []
        for offset, chunk in self._chunks(text):
            spans = list(tokenizer.span_tokenize(chunk))
            if self.keep_newlines:
                for i, (start, end) in enumerate(spans):
                    stop = spans[i + 1][0] if i + 1 < len(spans) else len(chunk)
                    sentences.append(chunk[start:stop])
            else:
                sentences.extend(chunk[start:end] for start, end in spans)
        return sentences


class IdentitySplitter:
    """Without ``--split-sentences`` a document is one sequence."""

    def split(self, text):
        return [text]
