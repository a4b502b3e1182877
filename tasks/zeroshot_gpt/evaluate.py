"""Zero-shot GPT evaluation under any TP/PP/DP layout.

Samples are dealt round-robin to the data-parallel ranks and run one micro-batch at a time
through the pipeline schedule (forward only); the last pipeline stage sums what it scored and
the sums are added over the data-parallel group, so every layout reports the same numbers.
"""
import math
from typing import Dict, List

import numpy as np
import torch
import torch.distributed as dist

from megatron.core import parallel_state
from megatron.core.models import GPTModel
from megatron.core.pipeline_parallel.schedules import get_forward_backward_func
from megatron.core.transformer import ModelType
from megatron.global_vars import get_args, get_tokenizer
from megatron.initialize import get_device
from megatron.utils import get_ltor_masks_and_position_ids, print_rank_0, print_rank_last
from tasks.zeroshot_gpt.datasets import (
    Sample,
    lambada_samples,
    read_lambada,
    read_wikitext,
    wikitext_samples,
)


def _model_provider(parallel_output: bool):
    def provider(pre_process=True, post_process=True):
        from megatron.config_from_args import core_transformer_config_from_args

        args = get_args()
        return GPTModel(core_transformer_config_from_args(args), vocab_size=args.padded_vocab_size,
                        max_sequence_length=args.max_position_embeddings, pre_process=pre_process,
                        post_process=post_process, parallel_output=parallel_output)
    return provider


def _batches(samples: List[Sample], micro_batch_size: int, dp_rank: int, dp_size: int):
    """This data-parallel rank's micro-batches; the last is padded with masked-out copies so
    every micro-batch has the shape the pipeline stages exchange."""
    mine = samples[dp_rank::dp_size]
    for first in range(0, len(mine), micro_batch_size):
        chunk = mine[first:first + micro_batch_size]
        tokens = torch.from_numpy(np.stack([s[0] for s in chunk]))
        mask = torch.from_numpy(np.stack([s[1] for s in chunk]))
        if len(chunk) < micro_batch_size:
            missing = micro_batch_size - len(chunk)
            tokens = torch.cat([tokens, tokens[:1].expand(missing, -1)])
            mask = torch.cat([mask, torch.zeros(missing, mask.shape[1])])
        yield tokens, mask


def masked_loss_sum(per_token_loss: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Sum of the per-token losses ``[b, s]`` where the mask is 1, in fp32."""
    return (per_token_loss.float() * loss_mask).sum()


def count_all_targets_correct(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Rows whose greedy prediction equals the label at every masked position (``logits [b, s, v]``);
    rows without any masked position (batch padding) never count."""
    wrong = ((logits.argmax(dim=-1) != labels) & (loss_mask > 0)).sum(dim=1)
    has_target = loss_mask.sum(dim=1) > 0
    return ((wrong == 0) & has_target).sum()


def _forward_step(task: str):
    def forward_step(data_iterator, model):
        tokens_and_labels, loss_mask = next(data_iterator)
        device = get_device()
        tokens_and_labels, loss_mask = tokens_and_labels.to(device), loss_mask.to(device)
        tokens, labels = tokens_and_labels[:, :-1].contiguous(), tokens_and_labels[:, 1:].contiguous()
        attention_mask, _, position_ids = get_ltor_masks_and_position_ids(tokens, None, False, False, False)
        if task == "WIKITEXT103":
            output = model(tokens, position_ids, attention_mask, labels=labels)  # per-token loss [b, s]

            def loss_func(per_token_loss):
                loss_sum = masked_loss_sum(per_token_loss, loss_mask)
                return loss_sum, {"loss_sum": loss_sum.detach().double()}
        else:
            output = model(tokens, position_ids, attention_mask)  # full-vocabulary logits [b, s, v]

            def loss_func(logits):
                correct = count_all_targets_correct(logits, labels, loss_mask).double()
                return correct, {"correct": correct}
        return output, loss_func
    return forward_step


def _run(model, samples: List[Sample], task: str, args, pg) -> Dict[str, float]:
    from megatron.config_from_args import core_transformer_config_from_args

    config = core_transformer_config_from_args(args)
    forward_backward = get_forward_backward_func(pg)
    totals: Dict[str, torch.Tensor] = {}
    for chunk in model:
        chunk.eval()
    with torch.no_grad():
        for batch in _batches(samples, args.micro_batch_size, pg.dp_rank, pg.data_parallel_size):
            reported = forward_backward(forward_step_func=_forward_step(task), data_iterator=iter([batch]),
                                        model=model[0], num_microbatches=1, seq_length=args.seq_length,
                                        micro_batch_size=args.micro_batch_size, config=config,
                                        forward_only=True, pg=pg)
            for item in reported:
                for key, value in item.items():
                    totals[key] = totals.get(key, 0) + value
    if not pg.is_pipeline_last_stage():
        return {}
    keys = sorted(totals) or (["loss_sum"] if task == "WIKITEXT103" else ["correct"])
    summed = torch.stack([torch.as_tensor(totals.get(k, 0.0), dtype=torch.float64) for k in keys])
    if pg.data_parallel_size > 1:
        # gloo and NCCL both reduce float64 exactly enough for sums of a few thousand losses.
        dist.all_reduce(summed, group=pg.dp)
    return {key: float(value) for key, value in zip(keys, summed.tolist())}


def wikitext_metrics(loss_sum: float, num_tokenized_tokens: int, num_original_tokens: int) -> Dict[str, float]:
    """Megatron's numbers: loss per predicted token, its perplexity, and the perplexity per
    original word (the loss rescaled by the BPE-to-word ratio); both capped at exp(20)."""
    val_loss = loss_sum / (num_tokenized_tokens - 1)
    token_ratio = (num_tokenized_tokens - 1) / (num_original_tokens - 1)
    return {"avg loss": val_loss, "ppl": math.exp(min(20.0, val_loss)),
            "adjusted ppl": math.exp(min(20.0, val_loss * token_ratio)), "token ratio": token_ratio}


def _result_line(task: str, metrics: Dict[str, float]) -> str:
    parts = [f"{key}: {value:.6E}" if isinstance(value, float) and key != "number correct" else f"{key}: {value}"
             for key, value in metrics.items()]
    return "-" * 80 + f"\n validation results on {task} | " + " | ".join(parts) + " |\n" + "-" * 80


def main() -> Dict[str, float]:
    """Evaluate ``--load`` (or ``--pretrained-checkpoint``) on the one ``--valid-data`` file."""
    from megatron.checkpointing import load_checkpoint
    from megatron.model_setup import get_model

    args = get_args()
    task = args.task
    if not args.valid_data or len(args.valid_data) != 1:
        raise ValueError(f"--task {task} evaluates exactly one --valid-data file, got {len(args.valid_data or [])}")
    if args.load is None and args.pretrained_checkpoint is None:
        raise ValueError(f"--task {task} needs the checkpoint to evaluate: --load or --pretrained-checkpoint")
    path = args.valid_data[0]
    tokenizer = get_tokenizer()
    pad_id = tokenizer.eod
    if task == "WIKITEXT103":
        data = read_wikitext(path, tokenizer.tokenize)
        samples = wikitext_samples(data, args.seq_length, args.overlapping_eval, pad_id)
    else:
        texts = read_lambada(path)
        samples = lambada_samples(texts, tokenizer.tokenize, args.seq_length, pad_id, args.strict_lambada, path)
    print_rank_0(f"> {task}: {len(samples)} samples from {path}")

    pg = parallel_state.get_process_groups()
    # Logits are gathered over the tensor-parallel ranks for LAMBADA's argmax; the loss needs no gather.
    model = get_model(_model_provider(parallel_output=task == "WIKITEXT103"), ModelType.encoder_or_decoder, args, pg,
                      wrap_with_ddp=False)
    load_arg = "load" if args.load is not None else "pretrained_checkpoint"
    args.no_load_optim, args.no_load_rng = True, True
    load_checkpoint(model, None, None, args, load_arg=load_arg)

    totals = _run(model, samples, task, args, pg)
    if not pg.is_pipeline_last_stage():
        return {}
    if task == "WIKITEXT103":
        metrics = wikitext_metrics(totals["loss_sum"], data.num_tokenized_tokens, data.num_original_tokens)
    else:
        correct = int(round(totals["correct"]))
        metrics = {"number correct": correct, "total examples": len(samples),
                   "avg accuracy": correct / len(samples)}
    print_rank_last(_result_line(task, metrics))
    return metrics
