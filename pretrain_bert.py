"""Pretrain BERT: masked-LM loss plus the sentence-order (binary) head, as Megatron-LM's pretrain_bert.py."""
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
    from megatron.arguments import core_transformer_config_from_args

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


def forward_step(data_iterator, model):
    timers = get_timers()
    timers("batch-generator", log_level=2).start()
    tokens, types, sentence_order, loss_mask, lm_labels, padding_mask = get_batch(data_iterator)
    timers("batch-generator", log_level=2).stop()
    if not _binary_head(get_args()):
        types = None
    output_tensor = model(tokens, padding_mask, tokentype_ids=types, lm_labels=lm_labels)
    return output_tensor, partial(loss_func, loss_mask, sentence_order)


def train_valid_test_datasets_provider(train_val_test_num_samples):
    args = get_args()
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
