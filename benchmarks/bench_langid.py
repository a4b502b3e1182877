#!/usr/bin/env python
"""Which offline language identifier should cleanup_dataset.py use? py3langid against langdetect
(and lingua, if installed) on speed and on the decision the tool makes: English or not.

Labelled text without a network: English documents are cut from the bundled demo corpus
(Python's documentation) and from the en_GB/en_AU/en_CA translations; the other languages come
from the gettext catalogues (.mo) under /usr/share/locale, whose translated messages are joined
into documents of about --chars characters. These are interface strings, shorter and more
formulaic than web prose, so absolute accuracies are a lower bound; the comparison is the point.

    pip install langdetect   # only for this comparison
    nice -n 10 python benchmarks/bench_langid.py --chars 300 --per-language 20
"""
import argparse
import collections
import gettext
import glob
import os
import random
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def locale_documents(chars, per_language, rng):
    """{language: [documents]} from the gettext catalogues (language = the locale's first part)."""
    texts = collections.defaultdict(list)
    for path in sorted(glob.glob("/usr/share/locale/*/LC_MESSAGES/*.mo")):
        locale = path.split(os.sep)[-3]
        if "@" in locale:
            continue
        try:
            with open(path, "rb") as handle:
                catalog = gettext.GNUTranslations(handle)._catalog
        except Exception:  # a malformed catalogue: skip it
            continue
        language = locale.split("_")[0]
        texts[language].extend(v for k, v in catalog.items() if k and isinstance(v, str) and len(v) > 15
                               and "%" not in v and "{" not in v)
    docs = {}
    for language, messages in texts.items():
        rng.shuffle(messages)
        out, current = [], ""
        for message in messages:
            current += " " + " ".join(message.split())
            if len(current) >= chars:
                out.append(current.strip()[:chars])
                current = ""
                if len(out) >= per_language:
                    break
        if len(out) >= per_language // 2:
            docs[language] = out
    return docs


def english_documents(chars, count, rng):
    from tools.make_demo_corpus import iter_documents
    text = " ".join(" ".join(d["text"].split()) for d in iter_documents())
    starts = sorted(rng.sample(range(len(text) - chars), count))
    return [text[s:s + chars] for s in starts]


def identifiers():
    found = {}
    from py3langid.langid import MODEL_FILE, LanguageIdentifier
    ident = LanguageIdentifier.from_model_file(MODEL_FILE)
    found["py3langid"] = lambda t: ident.classify(t)[0]
    try:
        import langdetect
        langdetect.DetectorFactory.seed = 0  # otherwise results change run to run

        def detect(t):
            try:
                return langdetect.detect(t).split("-")[0]
            except langdetect.lang_detect_exception.LangDetectException:
                return "unknown"
        found["langdetect"] = detect
    except ImportError:
        print("langdetect not installed; skipped", file=sys.stderr)
    try:
        from lingua import LanguageDetectorBuilder
        detector = LanguageDetectorBuilder.from_all_languages().build()

        def lingua_detect(t):
            language = detector.detect_language_of(t)
            return language.iso_code_639_1.name.lower() if language else "unknown"
        found["lingua"] = lingua_detect
    except ImportError:
        pass
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", type=int, default=300)
    parser.add_argument("--per-language", type=int, default=20)
    parser.add_argument("--english", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    by_language = locale_documents(args.chars, args.per_language, rng)
    english = english_documents(args.chars, args.english, rng) + by_language.pop("en", [])
    others = [(language, doc) for language, docs in sorted(by_language.items()) for doc in docs]
    print(f"{len(english)} English documents, {len(others)} in {len(by_language)} other languages, "
          f"{args.chars} characters each")
    print("| identifier | docs/s (1 core) | MiB/s | English recall | English precision | non-English docs called "
          "English | exact language (non-English) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, classify in identifiers().items():
        texts = english + [d for _, d in others]
        classify(texts[0])  # load models outside the timing
        start = time.process_time()
        labels = [classify(t) for t in texts]
        seconds = time.process_time() - start
        mib = sum(len(t.encode()) for t in texts) / 2 ** 20
        en_labels, other_labels = labels[:len(english)], labels[len(english):]
        true_en = sum(label == "en" for label in en_labels)
        false_en = sum(label == "en" for label in other_labels)
        exact = sum(label == language for label, (language, _) in zip(other_labels, others))
        print(f"| {name} | {len(texts) / seconds:,.0f} | {mib / seconds:.2f} | {true_en / len(english):.3f} | "
              f"{true_en / max(1, true_en + false_en):.3f} | {false_en} / {len(others)} | "
              f"{exact / len(others):.3f} |")


if __name__ == "__main__":
    main()
