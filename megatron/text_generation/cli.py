"""What the generation tools share: Megatron's sampling flags and a GPT model loaded for inference."""
import argparse
from typing import Optional

import torch

from megatron.text_generation.sampling import SamplingParams

# Generation never resumes training: the optimizer and RNG states of the checkpoint are skipped by
# load_gpt_for_generation, not through --no-load-optim/--no-load-rng defaults (which would make a
# missing --load look like a misuse of those flags).
# Nothing trains: the training-schedule flags of the user's pretraining GPT_ARGS are accepted unchanged.
GENERATION_DEFAULTS = {"tokenizer_type": "GPT2BPETokenizer", "training_schedule": "none"}


def add_sampling_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group(title="text generation")
    group.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature (> 0).")
    group.add_argument("--greedy", action="store_true", help="Take the most likely token at every step.")
    group.add_argument("--top_p", "--top-p", dest="top_p", type=float, default=0.0,
                       help="Nucleus sampling: draw from the smallest set of tokens whose probability reaches top_p (0: off).")
    group.add_argument("--top_k", "--top-k", dest="top_k", type=int, default=0,
                       help="Draw from the top_k most likely tokens (0: off).")
    group.add_argument("--out-seq-length", type=int, default=1024,
                       help="Tokens to generate at most per prompt (capped by --max-position-embeddings).")
    group.add_argument("--recompute", action="store_true",
                       help="Re-run the whole prefix at every step instead of using the KV cache.")
    return parser


def sampling_params_from_args(args) -> SamplingParams:
    try:
        params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, greedy=args.greedy)
    except ValueError as error:
        raise ValueError(f"--{error}") from None  # the message starts with the flag's name
    if args.out_seq_length < 0:
        raise ValueError(f"--out-seq-length must be >= 0, got {args.out_seq_length}")
    return params


def check_generation_layout(args) -> None:
    if getattr(args, "virtual_pipeline_model_parallel_size", None) is not None:
        raise ValueError("--num-layers-per-virtual-pipeline-stage is not supported by text generation "
                         "(one model chunk per pipeline stage)")
    if not args.load:
        raise ValueError("--load is required: the checkpoint directory to generate from")


def out_seq_length_notice(args, longest_prompt: Optional[int], shortest_prompt: Optional[int] = None) -> str:
    """One line when ``--out-seq-length`` asks for more tokens than the model's positions hold, else "".

    ``longest_prompt``/``shortest_prompt`` are the prompt lengths in tokens (unconditional generation
    starts from one end-of-document token); None for a server, whose prompts are not known yet.
    """
    positions = args.max_position_embeddings
    wanted = args.out_seq_length
    if longest_prompt is None:
        if wanted <= positions - 1:
            return ""
        return (f"notice: --out-seq-length {wanted} does not fit the model's {positions} positions "
                f"(--max-position-embeddings); a request whose prompt plus tokens_to_generate exceeds "
                f"{positions} tokens is refused with 400")
    if longest_prompt + wanted <= positions:
        return ""
    most = positions - (shortest_prompt if shortest_prompt is not None else longest_prompt)
    return (f"notice: --out-seq-length {wanted} is capped by --max-position-embeddings {positions}: "
            f"prompt plus continuation stop at {positions} tokens, so at most {most} tokens are generated "
            f"per prompt (the longest prompt has {longest_prompt} tokens)")


def gpt_inference_model_provider(pre_process=True, post_process=True):
    """GPT returning full-vocabulary logits, as sampling needs them on every tensor-parallel rank."""
    from megatron.config_from_args import core_transformer_config_from_args
    from megatron.core.models import GPTModel
    from megatron.global_vars import get_args

    args = get_args()
    config = core_transformer_config_from_args(args)
    # Sequence parallelism splits the sequence over tensor-parallel ranks, which a one-token decoding
    # step cannot be; it only saves activation memory in training and does not change the weights.
    config.sequence_parallel = False
    return GPTModel(config, vocab_size=args.padded_vocab_size,
                    max_sequence_length=args.max_position_embeddings, pre_process=pre_process,
                    post_process=post_process, parallel_output=False)


def load_gpt_for_generation(args) -> torch.nn.Module:
    """The checkpoint in ``--load`` as one evaluation-mode model: this rank's tensor-parallel shard of
    its pipeline stage."""
    from megatron.checkpointing import load_checkpoint
    from megatron.core import parallel_state
    from megatron.core.transformer import ModelType
    from megatron.model_setup import get_model

    args.no_load_optim = True
    args.no_load_rng = True
    pg = parallel_state.get_process_groups()
    chunks = get_model(gpt_inference_model_provider, ModelType.encoder_or_decoder, args, pg, wrap_with_ddp=False)
    iteration = load_checkpoint(chunks, None, None, args)
    if iteration == 0 and not _tracker_exists(args.load):
        raise ValueError(f"--load {args.load} holds no checkpoint (no latest_checkpointed_iteration.txt)")
    model = chunks[0]
    model.eval()
    return model


def _tracker_exists(load_dir: str) -> bool:
    import os

    from megatron.checkpointing import get_checkpoint_tracker_filename

    return os.path.isfile(get_checkpoint_tracker_filename(load_dir))


def sampling_generator(seed: int) -> torch.Generator:
    from megatron.initialize import get_device

    return torch.Generator(device=get_device()).manual_seed(seed)


def write_genfile(genfile: str, results) -> None:
    """--genfile: one JSON object per sample, written atomically by rank 0; every rank waits for it."""
    import json

    import torch.distributed as dist

    from megatron.core.fileio import atomic_open
    from megatron.utils import print_rank_0

    if not dist.is_initialized() or dist.get_rank() == 0:
        with atomic_open(genfile, "w", encoding="utf-8") as f:
            for result in results:
                f.write(json.dumps(result, ensure_ascii=False) + "\n")
    print_rank_0(f"wrote {len(results)} samples to {genfile}")
    if dist.is_initialized():
        dist.barrier()
