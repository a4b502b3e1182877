"""What the generation tools share: Megatron's sampling flags and a GPT model loaded for inference."""
import argparse

import torch

from megatron.text_generation.sampling import SamplingParams

# Generation never resumes training: skip the optimizer and the RNG state of the checkpoint.
GENERATION_DEFAULTS = {"tokenizer_type": "GPT2BPETokenizer", "no_load_rng": True, "no_load_optim": True}


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


def gpt_inference_model_provider(pre_process=True, post_process=True):
    """GPT returning full-vocabulary logits, as sampling needs them on every tensor-parallel rank."""
    from megatron.arguments import core_transformer_config_from_args
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
