"""GPT-2 byte-level BPE (``vocab.json`` + ``merges.txt``) with a tiktoken fast path.

The reference algorithm (OpenAI's GPT-2 encoder, which Megatron-LM ships): split the text
with GPT-2's regex, map each piece's UTF-8 bytes to printable characters, then repeatedly
merge the adjacent pair with the lowest merge rank until no listed pair is left. Text is
encoded literally: "<|endoftext|>" inside a text is not the end-of-document id.

tiktoken merges differently: it merges the adjacent pair whose *concatenation* has the
lowest rank, where the rank of merge r's result is r. The two agree on every input when

  (a) every merge's parts exist before it (a byte, or the result of an earlier merge),
  (b) no two merges produce the same string, and
  (c) BPE of each merge result alone gives that single token.

Proof sketch. Take any state reached by real BPE and an adjacent pair (p, q) whose
concatenation t is a merge result, with canonical merge (a, b). No merge so far crossed
the span of t, so the merges inside it happened in rank order exactly as in BPE of t
alone; that run therefore also passes through [p, q], and by (c) it must then merge p and
q into t, so (p, q) is a merge producing t, which by (b) is (a, b). Hence in every state
real BPE reaches, the rank tiktoken sees for a pair equals the pair's merge rank (or both
are absent), both pick the same pair, and by (a) a new pair never outranks the remaining
copies of the pair just merged, so merging them one at a time (tiktoken) equals merging
them all at once (GPT-2). By induction the outputs agree. (b) and (c) are not implied by
(a): merges [y z, x y, xy z] break (c) and tiktoken turns "xyz" into one token where BPE
stops at [x, yz].

(a) and (b) are checked while loading, (c) by running Hugging Face's BPE (the reference
algorithm) over every merge result at once. If a check fails, the tokenizer says so once
and merges with the BPE model of ``tokenizers`` instead.

One more difference is the regex engine: tiktoken's Rust tables know fewer assigned
characters than the ``regex`` module of a recent release (Unicode 16 against 17 here). A
probe over all code points found that every character they disagree on is new in the
newer Unicode, so, as long as Python's ``unicodedata`` is no newer than tiktoken's tables
(checked at load with one probe letter per Unicode version), a character they could
disagree on is unassigned ("Cn") for ``unicodedata``. A text holding one is split with the
``regex`` module (the reference's engine) and only its pieces go to tiktoken. The
``tokenizers`` engine always splits with the ``regex`` module: its own splitter (Oniguruma)
misreads the same new letters (a Unicode 17 letter followed by "'s" keeps the apostrophe).
"""
import hashlib
import json
import os
import re
import sys
import unicodedata

from .base import MegatronTokenizer

_NON_ASCII = re.compile(r"[^\x00-\x7f]")

EOD_TOKEN = "<|endoftext|>"
# GPT-2's pre-tokenization regex (contractions, letters, digits, other, whitespace).
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


# A letter first assigned in each Unicode version, to find the version of tiktoken's tables.
_PROBE_LETTERS = (((15, 0), "\U00011F04"), ((15, 1), "\U0002EBF0"), ((16, 0), "\u1C89"), ((17, 0), "\u0C5C"))
_tiktoken_unicode = None


def tiktoken_unicode_version():
    """The newest Unicode version (major, minor) whose new letters tiktoken's regex knows."""
    global _tiktoken_unicode
    if _tiktoken_unicode is None:
        import tiktoken

        ranks = {bytes([b]): b for b in range(256)}
        for _, letter in _PROBE_LETTERS:
            encoded = letter.encode("utf-8")
            for end in range(2, len(encoded) + 1):
                ranks.setdefault(encoded[:end], len(ranks))
            ranks[b"a" + encoded] = len(ranks)
        probe = tiktoken.Encoding("megatron-unicode-probe", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                                  special_tokens={})
        # "a" + letter is one piece (" ?\p{L}+") only if the engine knows the letter.
        known = [version for version, letter in _PROBE_LETTERS if len(probe.encode_ordinary("a" + letter)) == 1]
        _tiktoken_unicode = max(known, default=(14, 0))
    return _tiktoken_unicode


def bytes_to_unicode():
    """GPT-2's reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes map to themselves; the others (controls, space, soft hyphen...)
    to U+0100 onwards in byte order, so no token string contains whitespace.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def load_gpt2_vocab(vocab_file):
    try:
        with open(vocab_file, encoding="utf-8") as f:
            vocab = json.load(f)
    except OSError as exc:
        raise ValueError(f"--vocab-file {vocab_file}: cannot read ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"--vocab-file {vocab_file}: not a JSON vocabulary ({exc})") from None
    if not isinstance(vocab, dict) or not vocab:
        raise ValueError(f"--vocab-file {vocab_file}: expected a non-empty JSON object token -> id")
    for token, token_id in vocab.items():
        if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
            raise ValueError(f"--vocab-file {vocab_file}: token {token!r} has id {token_id!r}, not an int >= 0")
    if len(set(vocab.values())) != len(vocab):
        raise ValueError(f"--vocab-file {vocab_file}: two tokens share an id")
    return vocab


def load_gpt2_merges(merge_file):
    """Read ``merges.txt``: an optional ``#version`` line, then ``left right`` per line."""
    try:
        with open(merge_file, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except OSError as exc:
        raise ValueError(f"--merge-file {merge_file}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"--merge-file {merge_file}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    merges = []
    for lineno, line in enumerate(lines, start=1):
        if (lineno == 1 and line.startswith("#version")) or not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{merge_file}:{lineno}: expected two space-separated tokens, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def check_tiktoken_equivalence(vocab, merges, byte_decoder):
    """Why tiktoken would differ from real BPE on these files, or None when it cannot.

    Checks (a) and (b) of the module docstring here; (c) needs a BPE run, see
    ``_check_merge_results_are_whole``.
    """
    for ch in byte_decoder:
        if ch not in vocab:
            return f"the byte-level character {ch!r} is missing from vocab.json"
    available = set(byte_decoder)
    for r, (left, right) in enumerate(merges):
        if left not in available or right not in available:
            missing = left if left not in available else right
            return f"merge {r} ({left} {right}) uses {missing!r} before any merge produces it"
        merged = left + right
        if merged in available:
            return f"merge {r} ({left} {right}) produces {merged!r} a second time"
        if merged not in vocab:
            return f"merge {r} ({left} {right}) produces {merged!r}, which vocab.json lacks"
        available.add(merged)
    return None


def _build_hf_tokenizer(vocab, merges):
    from tokenizers import Tokenizer, models

    return Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))


def _check_merge_results_are_whole(hf_tokenizer, vocab, merges):
    """Check (c): real BPE of each merge result alone yields that one token."""
    results = [a + b for a, b in merges]
    if not results:
        return None
    encoding = hf_tokenizer.encode(results, is_pretokenized=True, add_special_tokens=False)
    pieces = {}
    for word_id, token_id in zip(encoding.word_ids, encoding.ids):
        pieces.setdefault(word_id, []).append(token_id)
    for r, result in enumerate(results):
        if pieces.get(r) != [vocab[result]]:
            return f"BPE of merge {r}'s result {result!r} is not that single token"
    return None


def _whole_check_marker(vocab_file, merge_file):
    """Where a passed check (c) for these exact files is remembered: a BPE run over every
    merge result costs about 0.6 s for GPT-2's 50k merges, more than the rest of loading."""
    digest = hashlib.sha256()
    for path in (vocab_file, merge_file):
        with open(path, "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    cache_root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache_root, "megatron-lite", "bpe-tiktoken-checks", digest.hexdigest())


def _whole_check_cached(vocab_file, merge_file):
    try:
        return os.path.exists(_whole_check_marker(vocab_file, merge_file))
    except OSError:
        return False


def _cache_whole_check(vocab_file, merge_file):
    try:
        marker = _whole_check_marker(vocab_file, merge_file)
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        with open(marker, "w") as f:
            f.write("tiktoken equals BPE for these files (check c passed)\n")
    except OSError:
        pass  # an unwritable cache only costs the check again next time


class GPT2BPETokenizer(MegatronTokenizer):
    """GPT-2 BPE; ``eod`` is the id of ``<|endoftext|>``.

    ``engine`` is "auto" (tiktoken when the files allow it, else ``tokenizers``),
    "tiktoken" (an error when they do not) or "tokenizers".
    """

    name = "GPT2BPETokenizer"
    _notified = set()

    def __init__(self, vocab_file, merge_file, engine="auto"):
        if engine not in ("auto", "tiktoken", "tokenizers"):
            raise ValueError(f"{self.name}: engine {engine!r} is not one of auto, tiktoken, tokenizers")
        self.vocab_file, self.merge_file = vocab_file, merge_file
        self._vocab = load_gpt2_vocab(vocab_file)
        self._inv_vocab = {i: t for t, i in self._vocab.items()}
        merges = load_gpt2_merges(merge_file)
        byte_encoder = bytes_to_unicode()
        byte_decoder = {ch: b for b, ch in byte_encoder.items()}
        self._id_bytes = self._decoding_table(byte_decoder)

        self._tiktoken = None
        self._rank_to_id = None
        self._split_regex = None
        self._piece_ids = {}
        reason = "engine='tokenizers' was asked for"
        hf = None
        if engine != "tokenizers":
            reason = check_tiktoken_equivalence(self._vocab, merges, byte_decoder)
            if reason is None and not _whole_check_cached(vocab_file, merge_file):
                hf = _build_hf_tokenizer(self._vocab, merges)
                reason = _check_merge_results_are_whole(hf, self._vocab, merges)
                if reason is None:
                    _cache_whole_check(vocab_file, merge_file)
            if reason is None:
                self._build_tiktoken(merges, byte_decoder)
            elif engine == "tiktoken":
                raise ValueError(f"{self.name}: --merge-file {merge_file} cannot use tiktoken: {reason}")
        if self._tiktoken is None:
            self._build_hf_fallback(hf or _build_hf_tokenizer(self._vocab, merges), byte_encoder)
            if engine == "auto" and (vocab_file, merge_file) not in self._notified:
                self._notified.add((vocab_file, merge_file))
                print(f"{self.name}: using the tokenizers engine for {merge_file}, since tiktoken "
                      f"would differ: {reason}", file=sys.stderr)

    @property
    def engine(self):
        """"tiktoken" or "tokenizers": which library encodes."""
        return "tiktoken" if self._tiktoken is not None else "tokenizers"

    def _decoding_table(self, byte_decoder):
        # None marks an id no token has (vocab.json may skip ids); decoding it is an error.
        table = [None] * (max(self._vocab.values()) + 1)
        to_byte = byte_decoder.__getitem__
        for token, token_id in self._vocab.items():
            try:
                table[token_id] = bytes(map(to_byte, token))
            except KeyError:
                # A token outside the byte-level alphabet (an added token): its own UTF-8.
                table[token_id] = token.encode("utf-8")
        return table

    def _build_tiktoken(self, merges, byte_decoder):
        import regex
        import tiktoken

        vocab, id_bytes = self._vocab, self._id_bytes

        def to_bytes(token):
            return id_bytes[vocab[token]]

        merge_ids = [vocab[a + b] for a, b in merges]
        if all(x < y for x, y in zip(merge_ids, merge_ids[1:])):
            # The ids already rise in merge order (GPT-2's files and ours): use them as ranks.
            ranks = {to_bytes(ch): vocab[ch] for ch in byte_decoder}
            ranks.update((to_bytes(a + b), vocab[a + b]) for a, b in merges)
            self._rank_to_id = None
        else:
            # Ranks 0-255 for the bytes and 256 + r for merge r, mapped back to ids after.
            ranks = {}
            lookup = []
            for ch, b in sorted(byte_decoder.items(), key=lambda item: item[1]):
                ranks[bytes([b])] = len(lookup)
                lookup.append(vocab[ch])
            for a, b in merges:
                ranks[to_bytes(a + b)] = len(lookup)
                lookup.append(vocab[a + b])
            self._rank_to_id = lookup
        self._tiktoken = tiktoken.Encoding(
            f"megatron-gpt2-bpe-{id(self)}", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={})
        self._split_regex = regex.compile(GPT2_SPLIT_PATTERN)
        self._encode_piece = self._tiktoken._encode_single_piece
        self._known_chars = set()
        python_unicode = tuple(int(x) for x in unicodedata.unidata_version.split(".")[:2])
        # Otherwise any non-ASCII text might hold a letter tiktoken does not know.
        self._cn_routing = python_unicode <= tiktoken_unicode_version()

    def _build_hf_fallback(self, hf, byte_encoder):
        import regex

        self._split_regex = regex.compile(GPT2_SPLIT_PATTERN)
        self._hf_model = hf.model
        # Latin-1 decoding turns each byte into the character of the same number; this table
        # then maps it to GPT-2's printable stand-in.
        self._byte_table = dict(byte_encoder)
        self._encode_piece = self._hf_encode_piece

    def _hf_encode_piece(self, piece_bytes):
        symbols = piece_bytes.decode("latin-1").translate(self._byte_table)
        tokens = self._hf_model.tokenize(symbols)
        if sum(len(token.value) for token in tokens) != len(symbols):
            # BPE drops a character it has no token for; GPT-2 would fail on it too.
            raise ValueError(f"{self.name}: {self.vocab_file} has no token for a byte of {piece_bytes!r}")
        return [token.id for token in tokens]

    @property
    def vocab_size(self):
        return len(self._vocab)

    @property
    def vocab(self):
        return self._vocab

    @property
    def inv_vocab(self):
        return self._inv_vocab

    @property
    def eod(self):
        if EOD_TOKEN not in self._vocab:
            return self._missing("eod", "vocab.json lacks <|endoftext|>")
        return self._vocab[EOD_TOKEN]

    def _has_unassigned_chars(self, text):
        # Only non-ASCII characters can be unassigned; collecting them with a regex scan is
        # several times cheaper than building the set of every character of the text.
        unseen = set(_NON_ASCII.findall(text)).difference(self._known_chars)
        if any(unicodedata.category(ch) == "Cn" for ch in unseen):
            return True
        self._known_chars.update(unseen)
        return False

    def _encode_by_pieces(self, text):
        # The regex module splits (the reference's engine); the engine only merges bytes.
        if len(self._piece_ids) > 1 << 18:
            self._piece_ids.clear()
        if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
            # Lone surrogates are not text; replace them with U+FFFD as tiktoken does.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        ids = []
        cache, encode_piece = self._piece_ids, self._encode_piece
        for piece in self._split_regex.findall(text):
            piece_ids = cache.get(piece)
            if piece_ids is None:
                piece_ids = cache[piece] = encode_piece(piece.encode("utf-8"))
            ids.extend(piece_ids)
        return ids

    def tokenize(self, text):
        if self._tiktoken is not None and (
                text.isascii() or (self._cn_routing and not self._has_unassigned_chars(text))):
            ids = self._tiktoken.encode_ordinary(text)
        else:
            ids = self._encode_by_pieces(text)
        if self._rank_to_id is not None:
            lookup = self._rank_to_id
            ids = [lookup[r] for r in ids]
        return ids

    def tokenize_batch(self, texts):
        return [self.tokenize(text) for text in texts]

    def detokenize(self, token_ids):
        table = self._id_bytes
        token_ids = list(token_ids)
        try:
            if token_ids and min(token_ids) < 0:
                raise IndexError  # a negative index would silently read from the end
            data = b"".join([table[i] for i in token_ids])
        except (IndexError, TypeError):
            bad = next(i for i in token_ids if not (0 <= i < len(table) and table[i] is not None))
            raise ValueError(f"{self.name}: token id {bad!r} is not in the vocabulary of {self.vocab_size}") from None
        # As GPT-2: bytes that are not valid UTF-8 (a split character) become U+FFFD.
        return data.decode("utf-8", errors="replace")
