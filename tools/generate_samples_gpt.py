#!/usr/bin/env python
"""Generate text with a trained GPT checkpoint.

    python tools/generate_samples_gpt.py --num-layers 2 --hidden-size 32 --num-attention-heads 4 \\
        --seq-length 32 --max-position-embeddings 32 --vocab-file vocab.json --merge-file merges.txt \\
        --load checkpoints/gpt --micro-batch-size 4 --out-seq-length 16 --top_k 5 \\
        (--num-samples 8 | --sample-input-file prompts.txt) --genfile samples.jsonl

``--num-samples N`` generates N texts unconditionally (from the end-of-document token);
``--sample-input-file`` continues each line of the file (one prompt a line). Each result is a JSON
line ``{"prompt", "text" (the prompt followed by its continuation), "length" (tokens generated),
"finished" (stopped at end of document)}`` in ``--genfile``. Prompts are decoded
``--micro-batch-size`` at a time; ``--recompute`` disables the KV cache (same greedy output, slower).
Runs under torchrun with ``--tensor-model-parallel-size`` and ``--pipeline-model-parallel-size``
(the checkpoint must have that layout; reshard it with tools/checkpoint_util.py). The last
stage samples and every stage receives the tokens, so rank 0 (first stage) writes the file.
"""
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def add_generate_args(parser):
    from megatron.text_generation.cli import add_sampling_args

    add_sampling_args(parser)
    group = parser.add_argument_group(title="samples")
    group.add_argument("--num-samples", type=int, default=0, help="Unconditional samples to generate.")
    group.add_argument("--sample-input-file", type=str, default=None, help="Prompts, one a line.")
    group.add_argument("--genfile", type=str, default=None, help="Output JSON lines file.")
    return parser


def read_prompts(path: str, max_prompt_tokens: int, tokenizer) -> list:
    """The prompts of ``path``; an empty or too long line is an error naming path:line."""
    if not os.path.isfile(path):
        raise ValueError(f"--sample-input-file {path} does not exist")
    prompts = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            prompt = line.rstrip("\r\n")
            if not prompt.strip():
                raise ValueError(f"{path}:{number}: empty prompt")
            count = len(tokenizer.tokenize(prompt))
            if count > max_prompt_tokens:
                raise ValueError(f"{path}:{number}: prompt of {count} tokens is longer than {max_prompt_tokens} "
                                 f"(--max-position-embeddings minus one generated token)")
            prompts.append(prompt)
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def prompts_from_args(args, tokenizer) -> list:
    """``--sample-input-file``'s prompts, or ``--num-samples`` unconditional ones (empty prompts)."""
    if args.sample_input_file is None:
        return [""] * args.num_samples
    return read_prompts(args.sample_input_file, args.max_position_embeddings - 1, tokenizer)


def check_args(args) -> None:
    from megatron.text_generation.cli import check_generation_layout, sampling_params_from_args

    sampling_params_from_args(args)
    check_generation_layout(args)
    if args.num_samples < 0:
        raise ValueError(f"--num-samples must be >= 0, got {args.num_samples}")
    if (args.num_samples > 0) == (args.sample_input_file is not None):
        raise ValueError("give exactly one of --num-samples N (unconditional) and --sample-input-file (conditional)")
    if not args.genfile:
        raise ValueError("--genfile is required: the JSON lines file to write")


def main(argv=None) -> int:

    from megatron.global_vars import get_tokenizer
    from megatron.initialize import initialize_megatron
    from megatron.text_generation import generate
    from megatron.text_generation.cli import (
        GENERATION_DEFAULTS,
        load_gpt_for_generation,
        out_seq_length_notice,
        sampling_generator,
        sampling_params_from_args,
        write_genfile,
    )
    from megatron.utils import print_rank_0

    args = initialize_megatron(add_generate_args, GENERATION_DEFAULTS, argv=argv)
    tool = os.path.basename(sys.argv[0]) or "generate_samples_gpt.py"
    try:
        check_args(args)
        tokenizer = get_tokenizer()
        max_length = args.max_position_embeddings
        prompts = prompts_from_args(args, tokenizer)
        model = load_gpt_for_generation(args)
    except ValueError as error:
        print(f"{tool}: error: {error}", file=sys.stderr, flush=True)
        return 2
    # Each continuation stops at --max-position-embeddings tokens (prompt included): say so when that
    # cuts below --out-seq-length, rather than returning shorter texts without a word.
    lengths = [len(tokenizer.tokenize(p)) if p else 1 for p in prompts]  # unconditional: one eod token
    notice = out_seq_length_notice(args, max(lengths), min(lengths))
    if notice:
        print_rank_0(notice)
    results = generate(model, tokenizer, prompts, args.out_seq_length, sampling_params_from_args(args), max_length,
                       batch_size=args.micro_batch_size, use_cache=not args.recompute,
                       generator=sampling_generator(args.seed))
    write_genfile(args.genfile, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
