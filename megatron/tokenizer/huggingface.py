"""A Hugging Face ``tokenizer.json`` (``--tokenizer-model FILE_OR_DIR``) behind the common interface."""
import json
import os

from .base import MegatronTokenizer

# Roles read from tokenizer_config.json / special_tokens_map.json, as Hugging Face names them.
_ROLE_KEYS = {"cls": "cls_token", "sep": "sep_token", "pad": "pad_token", "mask": "mask_token",
              "bos": "bos_token", "eos": "eos_token"}
# Without those files, only these unambiguous conventional spellings name a role.
_CONVENTIONAL = {"cls": ("[CLS]",), "sep": ("[SEP]",), "pad": ("[PAD]", "<pad>"), "mask": ("[MASK]", "<mask>"),
                 "bos": ("<s>", "[BOS]"), "eos": ("</s>", "[EOS]")}


def _token_content(value):
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"--tokenizer-model: cannot read {path} ({exc})") from None


class HuggingFaceTokenizer(MegatronTokenizer):
    """Encodes with ``tokenizers``; special ids come from the files beside ``tokenizer.json``.

    As in Megatron-LM, ``tokenize`` lets the file's post-processor add its special tokens
    (e.g. a BOS); pass ``add_special_tokens=False`` to get the bare text ids. ``eod`` is the
    EOS token, or ``<|endoftext|>`` when the file defines no EOS.
    """

    name = "HuggingFaceTokenizer"

    def __init__(self, tokenizer_model, add_special_tokens=True):
        from tokenizers import Tokenizer

        path = os.fspath(tokenizer_model)
        directory = path if os.path.isdir(path) else os.path.dirname(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise ValueError(f"--tokenizer-model {tokenizer_model}: no tokenizer.json there")
        try:
            self._tokenizer = Tokenizer.from_file(path)
        except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
            raise ValueError(f"--tokenizer-model {path}: not a tokenizers file ({exc})") from None
        self.tokenizer_model = path
        self.add_special_tokens = add_special_tokens
        self._vocab = self._tokenizer.get_vocab(with_added_tokens=True)
        self._inv_vocab = {i: t for t, i in self._vocab.items()}
        self._roles = self._find_roles(directory)

    def _find_roles(self, directory):
        roles = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            config_path = os.path.join(directory, name) if directory else name
            if not os.path.isfile(config_path):
                continue
            config = _read_json(config_path)
            for role, key in _ROLE_KEYS.items():
                token = _token_content(config.get(key))
                if role not in roles and token is not None:
                    if token not in self._vocab:
                        raise ValueError(f"{config_path}: {key} {token!r} is not in the tokenizer's vocabulary")
                    roles[role] = self._vocab[token]
        special = {t.content for t in self._tokenizer.get_added_tokens_decoder().values() if t.special}
        for role, spellings in _CONVENTIONAL.items():
            if role not in roles:
                for token in spellings:
                    if token in special:
                        roles[role] = self._vocab[token]
                        break
        if "eos" in roles:
            roles["eod"] = roles["eos"]
        elif "<|endoftext|>" in self._vocab:
            roles["eod"] = self._vocab["<|endoftext|>"]
        self._additional = sorted(self._vocab[t] for t in special if self._vocab[t] not in roles.values())
        return roles

    def _role(self, role):
        if role not in self._roles:
            return self._missing(role)
        return self._roles[role]

    @property
    def vocab_size(self):
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def vocab(self):
        return self._vocab

    @property
    def inv_vocab(self):
        return self._inv_vocab

    def tokenize(self, text):
        return self._tokenizer.encode(text, add_special_tokens=self.add_special_tokens).ids

    def tokenize_batch(self, texts):
        # encode_batch would start Rust threads; the callers are one-core workers.
        encode, add = self._tokenizer.encode, self.add_special_tokens
        return [encode(text, add_special_tokens=add).ids for text in texts]

    def detokenize(self, token_ids):
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=False)

    cls = property(lambda self: self._role("cls"))
    sep = property(lambda self: self._role("sep"))
    pad = property(lambda self: self._role("pad"))
    mask = property(lambda self: self._role("mask"))
    bos = property(lambda self: self._role("bos"))
    eos = property(lambda self: self._role("eos"))
    eod = property(lambda self: self._role("eod"))

    @property
    def additional_special_tokens_ids(self):
        return list(self._additional)
