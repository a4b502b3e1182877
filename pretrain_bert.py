"""Pretrain BERT: masked-LM loss plus the sentence-order (binary) head, as Megatron-LM's pretrain_bert.py.

With ``--data-impl tfrecord`` it trains on MLPerf BERT TFRecords (already masked examples, next-sentence
labels) and reports MLPerf's masked-LM accuracy and the NSP accuracy beside the losses.
"""
from functools import partial

import torch.nn.functional as F

from megatron.core.datasets.builders import DatasetConfig, build_train_valid_test_datasets
from megatron.core.models import BertModel
from megatron.core.transformer import ModelType
from megatron.global_vars import get_args, get_timers, get_tokenizer
from megatron.model_setup import device_batch
from megatron.training import pretrain
from megatron.utils import masked_mean, print_rank_0


def _binary_head(args) -> bool:
    return getattr(args, "bert_binary_head", True)


def model_provider(pre_process=True, post_process=True):
    from megatron.config_from_args import core_transformer_config_from_args

    args = get_args()
    print_rank_0("building BERT model ...")
    return BertModel(core_transformer_config_from_args(args), vocab_size=args.padded_vocab_size,
                     # Token types only mean something with two segments (the binary head's A and B).
                     max_sequence_length=args.max_position_embeddings,
                     num_tokentypes=2 if _binary_head(args) else 0,
                     add_binary_head=_binary_head(args), parallel_output=True, pre_process=pre_process,
                     post_process=post_process, fp16_lm_cross_entropy=args.fp16_lm_cross_entropy)


def get_batch(data_iterator):
    data = device_batch(next(data_iterator))
    return (data["text"].long(), data["types"].long(), data["is_random"].long(), data["loss_mask"].float(),
            data["labels"].long(), data["padding_mask"].long())


def loss_func(loss_mask, sentence_order, output_tensor):
    lm_loss_per_token, sop_logits = output_tensor
    lm_loss = masked_mean(lm_loss_per_token, loss_mask)
    if sop_logits is None:
        return lm_loss, {"lm loss": lm_loss.detach()}
    sop_loss = F.cross_entropy(sop_logits.view(-1, 2).float(), sentence_order.view(-1), ignore_index=-1)
    loss = lm_loss + sop_loss
    return loss, {"lm loss": lm_loss.detach(), "sop loss": sop_loss.detach()}


def vocab_parallel_argmax(logits, pg, vocab_size=None):
    """Argmax over the whole vocabulary of vocab-parallel logits ``[..., v/tp]``: the id a one-process
    argmax over the full logits gives, the lowest on ties (every rank gets it).

    Ids from ``vocab_size`` on are the rows padded for tensor parallelism (their number depends on the
    TP size) and are never predicted, so the accuracy does not depend on the layout.
    """
    import torch

    partition = logits.shape[-1]
    if vocab_size is not None:
        logits = logits[..., :max(0, min(partition, vocab_size - pg.tp_rank * partition))]
    if logits.shape[-1]:
        local_max, local_arg = logits.max(dim=-1)  # the first maximum within the shard
    else:  # a shard holding only padding rows: it never wins (rank 0 always holds real ids)
        local_max = logits.new_full(logits.shape[:-1], float("-inf"))
        local_arg = torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
    if pg.tensor_model_parallel_size == 1:
        return local_arg
    import torch.distributed as dist

    # fp32 holds fp16/bf16 maxima exactly (same order, same ties), so the gather needs no half-precision support.
    local_max = local_max.float().contiguous()
    maxima = [torch.empty_like(local_max) for _ in range(pg.tensor_model_parallel_size)]
    args = [torch.empty_like(local_arg) for _ in range(pg.tensor_model_parallel_size)]
    dist.all_gather(maxima, local_max, group=pg.tp)
    dist.all_gather(args, (local_arg + pg.tp_rank * partition).contiguous(), group=pg.tp)
    best_rank = torch.stack(maxima).argmax(dim=0)  # first rank holding the maximum: its ids are the lowest
    return torch.stack(args).gather(0, best_rank.unsqueeze(0)).squeeze(0)


def true_vocab_size(args):
    """The tokenizer's vocabulary (or ``--vocab-size``) without the tensor-parallel padding; None if unknown."""
    from megatron import global_vars

    tokenizer = global_vars._GLOBAL_TOKENIZER
    if tokenizer is not None:
        return tokenizer.vocab_size
    if getattr(args, "vocab_size", None):
        return args.vocab_size + (getattr(args, "vocab_extra_ids", 0) or 0)
    return None


def mlperf_loss_func(loss_mask, lm_labels, next_sentence, output_tensor, vocab_size=None):
    """MLPerf's metrics beside the losses: masked-LM accuracy (its target metric; the argmax over the
    ``vocab_size`` real ids, without the padding rows) and NSP accuracy."""
    from megatron.core.parallel_state import get_process_groups
    from megatron.core.tensor_parallel.cross_entropy import vocab_parallel_cross_entropy

    logits, nsp_logits = output_tensor  # [b, s, v/tp], [b, 2]
    pg = get_process_groups()
    labels = lm_labels.clamp(min=0)
    lm_loss = masked_mean(vocab_parallel_cross_entropy(logits.float(), labels, 0.0, pg), loss_mask)
    correct = (vocab_parallel_argmax(logits.detach(), pg, vocab_size) == labels).float()
    stats = {"lm loss": lm_loss.detach(), "mlm acc": masked_mean(correct, loss_mask)}
    if nsp_logits is None:
        return lm_loss, stats
    nsp_loss = F.cross_entropy(nsp_logits.view(-1, 2).float(), next_sentence.view(-1))
    stats["nsp loss"] = nsp_loss.detach()
    stats["nsp acc"] = (nsp_logits.detach().argmax(-1).view(-1) == next_sentence.view(-1)).float().mean()
    return lm_loss + nsp_loss, stats


def forward_step(data_iterator, model):
    timers = get_timers()
    timers("batch-generator", log_level=2).start()
    tokens, types, sentence_order, loss_mask, lm_labels, padding_mask = get_batch(data_iterator)
    timers("batch-generator", log_level=2).stop()
    if not _binary_head(get_args()):
        types = None
    if get_args().data_impl == "tfrecord":
        # Logits rather than per-token losses: the masked-LM accuracy needs the predictions.
        output_tensor = model(tokens, padding_mask, tokentype_ids=types)
        return output_tensor, partial(mlperf_loss_func, loss_mask, lm_labels, sentence_order,
                                      vocab_size=true_vocab_size(get_args()))
    output_tensor = model(tokens, padding_mask, tokentype_ids=types, lm_labels=lm_labels)
    return output_tensor, partial(loss_func, loss_mask, sentence_order)


def tfrecord_datasets(args, num_samples):
    """MLPerf TFRecords: --data-path (training, shuffled), --valid-data-path / --test-data-path (in order)."""
    from megatron.core.datasets.tfrecord_dataset import MLPerfBertTFRecordDataset, expand_tfrecord_paths

    datasets = []
    for name, flag, paths, count in (("train", "--data-path", args.data_path, num_samples[0]),
                                     ("valid", "--valid-data-path", args.valid_data_path, num_samples[1]),
                                     ("test", "--test-data-path", args.test_data_path, num_samples[2])):
        if not paths or not count:
            datasets.append(None)
            continue
        dataset = MLPerfBertTFRecordDataset(
            expand_tfrecord_paths(paths, flag), count, args.seq_length, args.micro_batch_size,
            args.data_parallel_size, args.seed, shuffle=name == "train", shuffle_buffer=args.tfrecord_shuffle_buffer,
            index_dir=args.tfrecord_index_dir, cache_dir=args.data_cache_path, name=name)
        print_rank_0(f"    {name}: {dataset.num_records} records in {len(dataset.files)} TFRecord file(s), "
                     f"max_predictions_per_seq {dataset.max_predictions_per_seq}, {count} samples")
        datasets.append(dataset)
    return tuple(datasets)


def train_valid_test_datasets_provider(train_val_test_num_samples):
    args = get_args()
    if args.data_impl == "tfrecord":
        print_rank_0("> building train, validation, and test datasets for BERT from MLPerf TFRecords ...")
        return tfrecord_datasets(args, train_val_test_num_samples)
    print_rank_0("> building train, validation, and test datasets for BERT ...")
    config = DatasetConfig(dataset_type="bert", seq_length=args.seq_length, seed=args.seed, split=args.split,
                           cache_dir=args.data_cache_path, vocab_size=args.padded_vocab_size,
                           masked_lm_prob=args.mask_prob, short_seq_prob=args.short_seq_prob,
                           binary_head=_binary_head(args))
    return build_train_valid_test_datasets(
        config, train_val_test_num_samples, tokenizer=get_tokenizer(), data_path=args.data_path,
        train_data_path=getattr(args, "train_data_path", None), valid_data_path=getattr(args, "valid_data_path", None),
        test_data_path=getattr(args, "test_data_path", None))


def main(argv=None):
    return pretrain(train_valid_test_datasets_provider, model_provider, ModelType.encoder_or_decoder, forward_step,
                    args_defaults={"tokenizer_type": "BertWordPieceLowerCase"}, argv=argv)


if __name__ == "__main__":
    main()
