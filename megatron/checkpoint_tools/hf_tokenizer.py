"""The tokenizer files of a Hugging Face export, so ``AutoTokenizer.from_pretrained(export_dir)`` works.

The checkpoint's saved arguments name its tokenizer (``tokenizer_type`` and ``vocab_file``,
``merge_file`` or ``tokenizer_model``); the files are copied under the names ``transformers``
looks for, with a ``tokenizer_config.json`` naming the class that reads them the way training did:

* ``GPT2BPETokenizer``: ``vocab.json`` + ``merges.txt``, ``GPT2Tokenizer`` (``<|endoftext|>`` is
  the beginning, end and unknown token, as in GPT-2);
* ``BertWordPieceLowerCase`` / ``BertWordPieceCase``: ``vocab.txt``, ``BertTokenizer`` with the
  matching ``do_lower_case``;
* ``HuggingFaceTokenizer``: the ``tokenizer.json`` itself, ``PreTrainedTokenizerFast``.

SentencePiece models are not exported: which ``transformers`` class reproduces a given model's
encoding (prefix spaces, added BOS/EOS, byte fallback) depends on how it was trained.
"""
import json
import os
import shutil
from typing import List, Optional

from megatron.core.fileio import atomic_open, atomic_write_text


class TokenizerExportError(ValueError):
    pass


def _source(args, name: str, tokenizer_type: str) -> str:
    path = getattr(args, name, None)
    if not path:
        raise TokenizerExportError(f"the checkpoint's arguments give {tokenizer_type} but no {name}")
    if not os.path.isfile(path):
        raise TokenizerExportError(f"the checkpoint's {name} {path} does not exist (it was saved with the "
                                   f"path used in training)")
    return path


def _copy(source: str, target: str) -> None:
    with open(source, "rb") as src, atomic_open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)


def export_tokenizer(args, directory: str, max_length: Optional[int]) -> List[str]:
    """Write the tokenizer of a checkpoint with saved ``args`` into ``directory``; returns the files written.

    Raises ``TokenizerExportError`` (one line) when the arguments name no tokenizer whose files can be found.
    """
    tokenizer_type = getattr(args, "tokenizer_type", None)
    extra = getattr(args, "vocab_extra_ids", 0) or 0
    if tokenizer_type is None:
        raise TokenizerExportError("the checkpoint's arguments name no tokenizer (tokenizer_type is None)")
    if extra:
        raise TokenizerExportError(f"the tokenizer has {extra} extra ids (--vocab-extra-ids), which the "
                                   f"Hugging Face tokenizer classes do not add the way training did")
    config = {"model_max_length": int(max_length)} if max_length else {}
    if tokenizer_type == "GPT2BPETokenizer":
        files = {"vocab.json": _source(args, "vocab_file", tokenizer_type),
                 "merges.txt": _source(args, "merge_file", tokenizer_type)}
        eod = "<|endoftext|>"
        config.update(tokenizer_class="GPT2Tokenizer", bos_token=eod, eos_token=eod, unk_token=eod,
                      add_prefix_space=False)
    elif tokenizer_type in ("BertWordPieceLowerCase", "BertWordPieceCase"):
        files = {"vocab.txt": _source(args, "vocab_file", tokenizer_type)}
        lower = tokenizer_type == "BertWordPieceLowerCase"
        config.update(tokenizer_class="BertTokenizer", do_lower_case=lower, strip_accents=None,
                      tokenize_chinese_chars=True, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                      cls_token="[CLS]", mask_token="[MASK]")
    elif tokenizer_type == "HuggingFaceTokenizer":
        files = {"tokenizer.json": _source(args, "tokenizer_model", tokenizer_type)}
        config.update(tokenizer_class="PreTrainedTokenizerFast")
    else:
        raise TokenizerExportError(f"{tokenizer_type} is not exported (which transformers class encodes a "
                                   f"SentencePiece model the same way depends on how it was trained)")
    written = []
    for name, source in files.items():
        _copy(source, os.path.join(directory, name))
        written.append(name)
    atomic_write_text(os.path.join(directory, "tokenizer_config.json"),
                      json.dumps(config, indent=2, sort_keys=True) + "\n")
    return written + ["tokenizer_config.json"]
