"""Fine-tuning a classifier on top of a pretrained BERT: epochs over the training files, accuracy
on every validation file after each epoch, and the best checkpoint kept in ``--save``.

Shares the training layer: the optimizer, scheduler and ``train_step`` (forward/backward with
tensor and data parallelism) are those of pretraining.
"""
import math
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron.core import parallel_state
from megatron.core.models.bert import bert_extended_attention_mask
from megatron.core.models.language_model import TransformerLanguageModel, replicated_linear
from megatron.core.models.module import LanguageModule
from megatron.core.pipeline_parallel.schedules import get_forward_backward_func
from megatron.core.tensor_parallel import init_rng_scope
from megatron.core.transformer import AttnMaskType, ModelType
from megatron.global_vars import get_args
from megatron.initialize import get_device
from megatron.utils import print_rank_0, print_rank_last

Sample = Dict[str, np.ndarray]


class Classification(LanguageModule):
    """BERT's encoder and pooler with a ``[h, num_classes]`` head on the pooled [CLS] state.

    Multiple choice (RACE) uses ``num_classes=1`` with inputs ``[b, choices, s]``: every choice
    is scored on its own and the scores of a question form its ``[b, choices]`` logits.

    The head sits on the last pipeline stage. Unlike pretraining's LM head it is not tied to the
    word embedding, so no stage holds a copy of the embedding table and no stage takes part in
    the embedding group's gradient all-reduce (``word_embeddings_weight`` is None under pipelining,
    on the first stage as on the last, so both skip it alike)."""

    head_name = "classification"  # the checkpoint names the head ``<head_name>_head``, as Megatron-LM

    def __init__(self, config, vocab_size: int, max_sequence_length: int, num_classes: int,
                 pre_process: bool = True, post_process: bool = True):
        super().__init__(config, pre_process, post_process)
        self.language_model = TransformerLanguageModel(
            config, vocab_size, max_sequence_length, AttnMaskType.padding, num_tokentypes=2, add_pooler=True,
            pre_process=pre_process, post_process=post_process, pg=self.pg)
        if post_process:
            setattr(self, f"{self.head_name}_dropout", torch.nn.Dropout(config.hidden_dropout))
            with init_rng_scope(config.init_seed, f"{self.head_name}_head"):
                setattr(self, f"{self.head_name}_head", replicated_linear(config.hidden_size, num_classes, config))

    def has_output_layer(self) -> bool:
        return False

    def word_embeddings_weight(self):
        if self.pg.pipeline_model_parallel_size > 1:
            return None
        return super().word_embeddings_weight()

    def forward(self, input_ids, attention_mask, tokentype_ids):
        if input_ids.dim() == 3:
            num_choices = input_ids.shape[1]
            flat = [t.reshape(-1, t.shape[-1]) for t in (input_ids, attention_mask, tokentype_ids)]
            scores = self.forward(*flat)
            return scores if not self.post_process else scores.view(-1, num_choices)  # [b, choices]
        output = self.language_model(input_ids, None, bert_extended_attention_mask(attention_mask),
                                     tokentype_ids=tokentype_ids)
        if not self.post_process:
            return output  # [s, b, h] for the next pipeline stage
        _, pooled = output
        dropout = getattr(self, f"{self.head_name}_dropout")
        return getattr(self, f"{self.head_name}_head")(dropout(pooled))  # [b, num_classes]


class MultipleChoice(Classification):
    """RACE's model: one score per choice, the head saved as ``multichoice_head`` (Megatron-LM's name)."""

    head_name = "multichoice"

    def __init__(self, config, vocab_size: int, max_sequence_length: int, pre_process: bool = True,
                 post_process: bool = True):
        super().__init__(config, vocab_size, max_sequence_length, 1, pre_process, post_process)


def classification_provider(num_classes: int, multiple_choice: bool = False) -> Callable:
    def provider(pre_process=True, post_process=True):
        from megatron.config_from_args import core_transformer_config_from_args

        args = get_args()
        config = core_transformer_config_from_args(args)
        if multiple_choice:
            return MultipleChoice(config, args.padded_vocab_size, args.max_position_embeddings, pre_process,
                                  post_process)
        return Classification(config, args.padded_vocab_size, args.max_position_embeddings, num_classes,
                              pre_process, post_process)
    return provider


def _rows_per_sample(samples: List[Sample]) -> int:
    """Sequences a sample runs through the encoder: its number of choices, or 1 for a pair."""
    text = samples[0]["text"]
    return int(text.shape[0]) if text.ndim == 2 else 1


def _stack(samples: List[Sample], size: int) -> Dict[str, torch.Tensor]:
    """A micro-batch of ``size`` rows; missing rows repeat the first with weight 0."""
    rows = samples + [samples[0]] * (size - len(samples))
    batch = {key: torch.from_numpy(np.stack([s[key] for s in rows]))
             for key in ("text", "types", "padding_mask", "label")}
    batch["weight"] = torch.tensor([1.0] * len(samples) + [0.0] * (size - len(samples)))
    return batch


def _forward_step(data_iterator, model):
    batch = {key: value.to(get_device()) for key, value in next(data_iterator).items()}
    logits = model(batch["text"], batch["padding_mask"], batch["types"])

    def loss_func(output):
        per_sample = F.cross_entropy(output.float(), batch["label"], reduction="none")
        weight = batch["weight"]
        loss = (per_sample * weight).sum() / weight.sum().clamp(min=1.0)
        correct = ((output.argmax(dim=-1) == batch["label"]).float() * weight).sum()
        return loss, {"classification loss": loss.detach(), "correct": correct.detach(), "count": weight.sum()}
    return logits, loss_func


def evaluate_accuracy(model, samples: List[Sample], args, pg, keep_last: Optional[bool] = None) -> Dict[str, float]:
    """(correct, total) over ``samples``, dealt round-robin to the data-parallel ranks; every
    rank returns the same numbers (counted on the last pipeline stage, then broadcast).

    ``keep_last`` (default ``--keep-last``) evaluates the last, incomplete batch too: its padding
    rows carry weight 0, so the accuracy stays correct / examples."""
    from megatron.config_from_args import core_transformer_config_from_args

    forward_backward = get_forward_backward_func(pg)
    config = core_transformer_config_from_args(args)
    totals = torch.zeros(2, dtype=torch.float64, device=get_device())
    if not (args.keep_last if keep_last is None else keep_last):
        # Megatron's validation loader drops the last incomplete batch unless --keep-last.
        whole = len(samples) - len(samples) % (args.micro_batch_size * pg.data_parallel_size)
        samples = samples[:whole]
    mine = samples[pg.dp_rank::pg.data_parallel_size]
    rows = args.micro_batch_size * _rows_per_sample(samples) if samples else args.micro_batch_size
    for chunk in model:
        chunk.eval()
    with torch.no_grad():
        for first in range(0, len(mine), args.micro_batch_size):
            batch = _stack(mine[first:first + args.micro_batch_size], args.micro_batch_size)
            for item in forward_backward(forward_step_func=_forward_step, data_iterator=iter([batch]), model=model[0],
                                         num_microbatches=1, seq_length=args.seq_length, micro_batch_size=rows,
                                         config=config, forward_only=True, pg=pg):
                totals += torch.stack([item["correct"], item["count"]]).to(totals)
    for chunk in model:
        chunk.train()
    if pg.data_parallel_size > 1:
        dist.all_reduce(totals, group=pg.dp)
    if pg.pipeline_model_parallel_size > 1:
        # Every stage needs the numbers: keeping the best checkpoint is a collective decision.
        dist.broadcast(totals, src=pg.pipeline_last_rank, group=pg.pp)
    correct, total = totals.cpu().tolist()
    return {"correct": int(round(correct)), "total": int(round(total)), "accuracy": correct / max(total, 1.0)}


def _set_training_length(args, num_train_samples: int) -> int:
    """Megatron's fine-tuning length: ``--epochs`` passes over the training set in whole global batches."""
    gbs = args.global_batch_size
    iters_per_epoch = num_train_samples // gbs
    if iters_per_epoch == 0:
        raise ValueError(f"--train-data holds {num_train_samples} examples, fewer than one global batch "
                         f"(--global-batch-size {gbs})")
    args.train_iters = args.epochs * iters_per_epoch
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.train_iters
    # The scheduler counts samples (validate_args checked the flags; the length is known only now).
    args.lr_decay_steps = args.lr_decay_iters * gbs
    args.wd_incr_steps = args.train_iters * gbs
    fraction = args.lr_warmup_fraction
    args.lr_warmup_steps = fraction * args.lr_decay_steps if fraction is not None else args.lr_warmup_iters * gbs
    if args.lr_warmup_steps > args.lr_decay_steps:
        raise ValueError(f"--lr-warmup-iters {args.lr_warmup_iters} exceeds the {args.lr_decay_iters} iterations of "
                         f"the lr decay (--epochs {args.epochs} x {iters_per_epoch} iterations, or --lr-decay-iters)")
    return iters_per_epoch


def _load_pretrained(model, optimizer, args) -> None:
    """The pretrained encoder's weights only: its LM and NSP heads are dropped, the classification head stays new."""
    from megatron.checkpointing import load_checkpoint

    encoder = [(name, p) for chunk in model for name, p in chunk.named_parameters() if "language_model." in name]
    before = [p.detach().clone() for _, p in encoder]
    finetune, args.finetune = args.finetune, True
    # Not strict: the classification head is new and the pretraining heads are not wanted.
    load_checkpoint(model, None, None, args, load_arg="pretrained_checkpoint", strict=False)
    args.finetune = finetune
    if encoder and all(torch.equal(old, p) for old, (_, p) in zip(before, encoder)):
        raise ValueError(f"--pretrained-checkpoint {args.pretrained_checkpoint} holds no weights of this BERT "
                         "encoder (a GPT checkpoint, or other parameter names?)")
    if optimizer is not None and hasattr(optimizer, "reload_model_params"):
        optimizer.reload_model_params()


def _whole_batch_policy(valid_sets: Dict[str, List[Sample]], args, pg) -> Dict[str, bool]:
    """Per validation set, whether its last incomplete batch is evaluated: with --keep-last, or when the
    set is smaller than one batch (dropping it, as Megatron-LM does, would evaluate nothing)."""
    batch = args.micro_batch_size * pg.data_parallel_size
    policy = {}
    for name, samples in valid_sets.items():
        if not samples:
            raise ValueError(f"--valid-data {name}: holds no examples")
        policy[name] = bool(args.keep_last)
        if not args.keep_last and len(samples) < batch:
            policy[name] = True
            print_rank_0(f" > {name}: {len(samples)} examples, fewer than one batch (--micro-batch-size "
                         f"{args.micro_batch_size} x {pg.data_parallel_size} data-parallel ranks): evaluating the "
                         f"partial batch (as --keep-last would; padding rows count for nothing)")
    return policy


def finetune(task: str, train_samples: List[Sample], valid_sets: Dict[str, List[Sample]], num_classes: int,
             multiple_choice: bool = False):
    """Train ``--epochs`` epochs (0: evaluate only) and report accuracy per validation file after each.

    Works with tensor, pipeline and data parallelism: every rank builds the same batches (each
    pipeline stage reads the padding mask; the first the tokens, the last the labels)."""
    from megatron.checkpointing import load_checkpoint, save_checkpoint
    from megatron.global_vars import get_timers
    from megatron.model_setup import get_model, setup_model_and_optimizer
    from megatron.training import TrainingContext, train_step

    args = get_args()
    pg = parallel_state.get_process_groups()
    provider = classification_provider(num_classes, multiple_choice)
    last_stage = pg.is_pipeline_last_stage()

    keep_last = _whole_batch_policy(valid_sets, args, pg)

    def report(epoch: int, model) -> float:
        accuracies = []
        for name, samples in valid_sets.items():
            result = evaluate_accuracy(model, samples, args, pg, keep_last[name])
            print_rank_0(f" > |epoch: {epoch}| metrics for {name}: correct / total = {result['correct']} / "
                         f"{result['total']} = {100 * result['accuracy']:.4f} %")
            accuracies.append(result["accuracy"])
        return float(np.mean(accuracies))

    if args.epochs == 0:
        model = get_model(provider, ModelType.encoder_or_decoder, args, pg, wrap_with_ddp=False)
        if args.load is not None:
            args.no_load_optim, args.no_load_rng = True, True
            load_checkpoint(model, None, None, args)
        elif args.pretrained_checkpoint is not None:
            _load_pretrained(model, None, args)
        report(0, model)
        return

    from megatron.startup_checks import check_save_dir

    check_save_dir(args.save)  # before the model is built and the epochs are spent
    iters_per_epoch = _set_training_length(args, len(train_samples))
    # Megatron-LM's fine-tuning command lines carry its periodic-evaluation and saving flags; here the
    # validation files are scored after every epoch and only an improvement is saved.
    unused = [_flag for name, _flag in (("eval_interval", "--eval-interval"), ("eval_iters", "--eval-iters"),
                                        ("save_interval", "--save-interval"))
              if name in getattr(args, "_explicit_flags", ())]
    if unused:
        print_rank_0(f"note: fine-tuning scores every --valid-data set after each epoch and saves only an improved "
                     f"checkpoint; {', '.join(unused)} {'has' if len(unused) == 1 else 'have'} no effect")
    model, optimizer, scheduler = setup_model_and_optimizer(provider, ModelType.encoder_or_decoder, args, pg)
    if args.iteration == 0 and args.pretrained_checkpoint is not None:
        # Nothing resumed from --load (none given, or no checkpoint there yet), as in Megatron-LM.
        _load_pretrained(model, optimizer, args)
        print_rank_0(f"> fine-tuning from --pretrained-checkpoint {args.pretrained_checkpoint} (encoder weights); "
                     f"the {task} head starts from random weights")
    from megatron.config_from_args import core_transformer_config_from_args

    rows = args.micro_batch_size * _rows_per_sample(train_samples)
    ctx = TrainingContext(args, core_transformer_config_from_args(args), pg, model, optimizer, scheduler,
                          _forward_step, get_timers(), None, micro_batch_rows=rows)
    per_rank = args.global_batch_size // pg.data_parallel_size
    best, iteration = -math.inf, args.iteration
    start_epoch = iteration // iters_per_epoch
    for epoch in range(start_epoch, args.epochs):
        order = np.random.RandomState(args.seed + epoch).permutation(len(train_samples))
        for step in range(iteration - epoch * iters_per_epoch, iters_per_epoch):
            batch_ids = order[step * args.global_batch_size:(step + 1) * args.global_batch_size]
            mine = [train_samples[i] for i in batch_ids[pg.dp_rank * per_rank:(pg.dp_rank + 1) * per_rank]]
            micro = iter([_stack(mine[k:k + args.micro_batch_size], args.micro_batch_size)
                          for k in range(0, per_rank, args.micro_batch_size)])
            losses, skipped, grad_norm, _ = train_step(ctx, micro)
            iteration += 1
            args.consumed_train_samples += args.global_batch_size
            if iteration % args.log_interval == 0:
                # The loss is known on the last pipeline stage; the last rank prints it.
                if last_stage:
                    print_rank_last(f" iteration {iteration:8d}/{args.train_iters:8d} | epoch {epoch + 1} | "
                                    f"classification loss: {losses['classification loss']:.6E} |")
        accuracy = report(epoch + 1, model)
        if args.save and accuracy > best:
            # Only an improvement is written, so the tracker always names the best epoch so far.
            save_checkpoint(iteration, model, optimizer, scheduler, args, pg)
            print_rank_0(f" > saved the best checkpoint so far (epoch {epoch + 1}, mean accuracy {accuracy:.4f})")
        best = max(best, accuracy)
    print_rank_0(f"done: best mean validation accuracy {best:.4f}")
