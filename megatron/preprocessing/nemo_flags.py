"""NeMo's spellings for the RETRO data tools: ``--tokenizer-library`` and underscore flag names.

NeMo's scripts mix ``--tokenizer-type`` with ``--input_file``; users paste those command lines,
so each tool registers NeMo's spelling and its hyphen/underscore twin for the same option
(argparse already accepts ``--flag=value``). No torch import.
"""
TOKENIZER_LIBRARIES = ("megatron", "sentencepiece", "huggingface")


def add_flag(group, name, *aliases, **kwargs):
    """``group.add_argument`` with ``name`` and its other spelling (``_`` <-> ``-``) both accepted."""
    spellings = [name, *aliases]
    body = name[2:]
    for twin in ("--" + body.replace("_", "-"), "--" + body.replace("-", "_")):
        if twin not in spellings:
            spellings.append(twin)
    kwargs.setdefault("dest", body.replace("-", "_"))
    return group.add_argument(*spellings, **kwargs)


def add_tokenizer_library_flag(group):
    group.add_argument("--tokenizer-library", "--tokenizer_library", dest="tokenizer_library", default=None,
                       choices=TOKENIZER_LIBRARIES,
                       help="NeMo's tokenizer library: megatron (the --tokenizer-type tokenizers), "
                            "sentencepiece (--tokenizer-model FILE.model) or huggingface "
                            "(--tokenizer-model tokenizer.json); nothing is downloaded")


def resolve_tokenizer_type(args):
    """Set ``args.tokenizer_type`` from ``--tokenizer-library``; returns an error line or None."""
    library = getattr(args, "tokenizer_library", None)
    if library in (None, "megatron"):
        if not args.tokenizer_type:
            return "--tokenizer-type is required (with --tokenizer-library megatron or none)"
        return None
    wanted = {"sentencepiece": ("SentencePieceTokenizer", "GPTSentencePieceTokenizer"),
              "huggingface": ("HuggingFaceTokenizer",)}[library]
    if args.tokenizer_type and args.tokenizer_type not in wanted:
        return (f"--tokenizer-type {args.tokenizer_type} does not belong to --tokenizer-library {library} "
                f"(use {' or '.join(wanted)}, or --tokenizer-library megatron)")
    if not getattr(args, "tokenizer_model", None):
        return f"--tokenizer-library {library} needs --tokenizer-model (a local file; nothing is downloaded)"
    args.tokenizer_type = args.tokenizer_type or wanted[0]
    return None
