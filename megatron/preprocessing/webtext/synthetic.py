"""A noisy web-like corpus with known defects, for tests, the cleaning example and benchmarks.

Documents are runs of real English sentences (drawn from a given pool) under made-up URLs.
Each defect is planted at a known place and listed in the returned manifest, so every tool's
output can be checked against what was put in:

* near-duplicates: a copy of an earlier document with a chosen fraction of its sentences
  replaced (the exact Jaccard similarity is measured by the tests, not assumed);
* exact duplicates: a copy differing only in letter case, punctuation and spacing;
* mojibake: UTF-8 text decoded as Windows-1252 (what ftfy repairs);
* foreign-language documents, from paragraphs written for this purpose in six languages;
* short documents (twelve words at most);
* task text: an evaluation example pasted into the middle of a document.
"""
import random
import re
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")

# Original paragraphs (not translations of any published text), for the language filter.
FOREIGN = {
    "de": ("Am Morgen fuhren wir mit dem Zug in die kleine Stadt am Fluss. Die Straßen waren noch leer, "
           "und aus der Bäckerei an der Ecke kam der Duft von frischem Brot. Wir setzten uns an einen Tisch "
           "vor dem Rathaus und sahen zu, wie die Händler ihre Stände für den Markt aufbauten.",
           "Der alte Gärtner erklärte uns geduldig, warum die Rosen in diesem Jahr so spät blühen. Der Winter "
           "sei zu lang gewesen, sagte er, und der Frühling zu nass. Trotzdem sei er zufrieden, denn die Äpfel "
           "hingen schon schwer an den Bäumen hinter dem Haus."),
    "fr": ("Chaque été, nous passions quelques semaines chez nos grands-parents, dans un village au bord de "
           "la mer. Le matin, nous allions acheter du pain et des fruits au marché, puis nous descendions à la "
           "plage avec nos cousins jusqu'au soir, quand le soleil disparaissait derrière les rochers.",
           "La bibliothèque municipale a rouvert ses portes après deux ans de travaux. Les lecteurs découvrent "
           "des salles plus lumineuses, de nouveaux ordinateurs et un espace réservé aux enfants, où des "
           "bénévoles organisent des lectures tous les mercredis après-midi."),
    "es": ("El pequeño pueblo se encuentra en lo alto de una colina, rodeado de olivos y viñedos. Cada "
           "otoño, los vecinos se reúnen en la plaza para celebrar la cosecha con música, comida casera y "
           "largas conversaciones que duran hasta bien entrada la noche.",
           "Mi abuela guardaba en la cocina un cuaderno lleno de recetas escritas a mano. Algunas páginas "
           "estaban manchadas de aceite y de harina, pero ella decía que esas manchas eran la prueba de que "
           "las recetas funcionaban de verdad."),
    "it": ("Ogni domenica mattina mio padre preparava il caffè per tutta la famiglia e poi usciva a comprare "
           "il giornale. Al suo ritorno ci sedevamo intorno al tavolo della cucina e discutevamo delle notizie "
           "della settimana, mentre la radio suonava vecchie canzoni.",
           "Il museo della città ospita una collezione di strumenti scientifici antichi, tra cui orologi, "
           "bussole e telescopi costruiti da artigiani locali. Le guide raccontano ai visitatori come questi "
           "oggetti venivano usati dai marinai e dagli astronomi del passato."),
    "nl": ("In het weekend fietsen we vaak langs de rivier naar het volgende dorp, waar een klein café staat "
           "met uitzicht op het water. Daar drinken we koffie met appeltaart en kijken we naar de boten die "
           "langzaam voorbij varen.",
           "De nieuwe school in onze wijk heeft een grote tuin waar de leerlingen zelf groenten kweken. In de "
           "herfst oogsten ze pompoenen en wortels, en de ouders helpen mee om er samen soep van te maken."),
    "pt": ("Quando chegámos à aldeia, já era noite e as ruas estavam iluminadas por pequenas lanternas. Uma "
           "senhora simpática indicou-nos o caminho para a pousada e ainda nos ofereceu um pedaço de bolo de "
           "laranja acabado de sair do forno.",
           "O rio atravessa a cidade de norte a sul e divide-a em dois bairros muito diferentes. De um lado "
           "ficam os edifícios antigos e as igrejas, do outro as fábricas abandonadas que hoje são galerias "
           "de arte e salas de concertos."),
}


def split_sentences(text: str) -> List[str]:
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if len(s.strip()) > 20]


def mojibake(text: str) -> str:
    """Curly punctuation, then its UTF-8 bytes read as Windows-1252: the classic scraping accident."""
    curly = text.replace("'", "\u2019").replace(" - ", " \u2014 ").replace('"', "\u201c", 1)
    return curly.encode("utf-8").decode("cp1252", errors="replace")


def exact_variant(text: str) -> str:
    """The same text up to case, punctuation and spacing (what exact dedup must still catch)."""
    return "  ".join(text.upper().replace(",", " ,").split(" "))


@dataclass
class Manifest:
    near_duplicates: List[Tuple[str, str, float]] = field(default_factory=list)  # (original, copy, replaced)
    exact_duplicates: List[Tuple[str, str]] = field(default_factory=list)
    mojibake: List[str] = field(default_factory=list)
    foreign: List[str] = field(default_factory=list)
    short: List[str] = field(default_factory=list)
    task_text: Dict[str, str] = field(default_factory=dict)  # id -> planted text


@dataclass
class NoiseConfig:
    near_duplicate: float = 0.05
    exact_duplicate: float = 0.03
    mojibake: float = 0.03
    foreign: float = 0.03
    short: float = 0.03
    task_text: float = 0.02
    # Fractions of sentences replaced in a near-duplicate: J ~ (1 - f) / (1 + f) for sentences of
    # similar length, i.e. about 0.9, 0.8, 0.67, 0.54, 0.43, 0.33, 0.25.
    replaced: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
    min_sentences: int = 8
    max_sentences: int = 30


def generate(sentences: Sequence[str], num_docs: int, seed: int = 0, noise: Optional[NoiseConfig] = None,
             task_texts: Sequence[str] = (), manifest: Optional[Manifest] = None) -> Iterator[dict]:
    """``num_docs`` records ``{"url", "text"}``; the defects planted go into ``manifest``."""
    noise = noise or NoiseConfig()
    manifest = manifest if manifest is not None else Manifest()
    rng = random.Random(seed)
    foreign = [p for paragraphs in FOREIGN.values() for p in paragraphs]
    history: List[Tuple[str, List[str]]] = []  # recent originals, for copies
    for i in range(num_docs):
        url = f"https://www.example{i % 97}.org/articles/{i:08d}.html"
        roll = rng.random()
        body = [rng.choice(sentences) for _ in range(rng.randint(noise.min_sentences, noise.max_sentences))]
        cut = noise.near_duplicate
        if history and roll < cut:
            original_url, original = rng.choice(history)
            fraction = rng.choice(noise.replaced)
            body = [rng.choice(sentences) if rng.random() < fraction else s for s in original]
            manifest.near_duplicates.append((original_url, url, fraction))
            text = " ".join(body)
        elif history and roll < (cut := cut + noise.exact_duplicate):
            original_url, original = rng.choice(history)
            text = exact_variant(" ".join(original))
            manifest.exact_duplicates.append((original_url, url))
        elif roll < (cut := cut + noise.mojibake):
            text = mojibake(" ".join(body))
            manifest.mojibake.append(url)
        elif roll < (cut := cut + noise.foreign):
            text = " ".join(rng.sample(foreign, 4))
            manifest.foreign.append(url)
        elif roll < (cut := cut + noise.short):
            text = " ".join(rng.choice(sentences).split()[:12])
            manifest.short.append(url)
        elif task_texts and roll < (cut := cut + noise.task_text):
            planted = rng.choice(task_texts)
            middle = len(body) // 2
            text = " ".join(body[:middle] + [planted] + body[middle:])
            manifest.task_text[url] = planted
        else:
            text = " ".join(body)
            history.append((url, body))
            if len(history) > 1000:
                history.pop(rng.randrange(len(history)))
        yield {"url": url, "text": text}
