"""Pretrain RETRO: Megatron's command line plus the RETRO flags (``--retro-train-data``,
``--retro-db``, ``--retro-knn-map``, ``--retro-chunk-size``, ...; see ``add_retro_args``).

Validation reports two losses, each with its perplexity: ``lm loss`` with the retrieved
neighbours and ``lm loss without retrieval`` with every neighbour blanked (all padding), so one
line shows how much retrieval helps.
"""
from functools import partial

import torch

from megatron.argument_groups import add_retro_args
from megatron.core.datasets.retro_dataset import build_retro_datasets
from megatron.core.models.retro import RetroConfig, RetroModel
from megatron.core.transformer import ModelType
from megatron.global_vars import get_args, get_timers, get_tokenizer
from megatron.model_setup import device_batch
from megatron.training import pretrain
from megatron.utils import causal_lm_batch, masked_mean, print_rank_0


def tokenizer_pad_id(tokenizer) -> int:
    """The tokenizer's pad id; one clear line when it has none."""
    try:
        return int(tokenizer.pad)
    except (AttributeError, NotImplementedError):
        raise ValueError(f"RETRO needs a pad token and {type(tokenizer).__name__} has none: add --need-pad-id "
                         "(as when the retmmap data was preprocessed)") from None


def retro_config_from_args(args, pad_id: int) -> RetroConfig:
    return RetroConfig(chunk_size=args.retro_chunk_size, num_neighbors=args.retro_num_neighbors,
                       encoder_num_layers=args.retro_encoder_layers,
                       encoder_cca_layers=tuple(args.retro_encoder_cca_layers),
                       decoder_cca_layers=tuple(args.retro_decoder_cca_layers), pad_id=pad_id)


def model_provider(pre_process=True, post_process=True):
    from megatron.config_from_args import core_transformer_config_from_args

    args = get_args()
    print_rank_0("building RETRO model ...")
    retro = retro_config_from_args(args, tokenizer_pad_id(get_tokenizer()))
    return RetroModel(core_transformer_config_from_args(args), retro,
                      vocab_size=args.padded_vocab_size, max_sequence_length=args.max_position_embeddings,
                      pre_process=pre_process, post_process=post_process, parallel_output=True,
                      fp16_lm_cross_entropy=args.fp16_lm_cross_entropy)


def get_batch(data_iterator):
    """tokens, labels, loss mask (tokens that are not padding, as NeMo), attention mask, positions, neighbours."""
    data = device_batch(next(data_iterator))
    tokenizer = get_tokenizer()
    tokens, labels, loss_mask, attention_mask, position_ids = causal_lm_batch(data["text"], tokenizer, get_args())
    loss_mask = loss_mask * (tokens != tokenizer_pad_id(tokenizer)).float()
    return tokens, labels, loss_mask, attention_mask, position_ids, data["retrieved_ids"].long()


def loss_func(loss_mask, blank_loss, output_tensor):
    loss = masked_mean(output_tensor, loss_mask)
    reported = {"lm loss": loss.detach()}
    if blank_loss is not None:
        reported["lm loss without retrieval"] = masked_mean(blank_loss, loss_mask).detach()
    return loss, reported


def forward_step(data_iterator, model):
    timers = get_timers()
    timers("batch-generator", log_level=2).start()
    tokens, labels, loss_mask, attention_mask, position_ids, retrieved = get_batch(data_iterator)
    timers("batch-generator", log_level=2).stop()
    output_tensor = model(tokens, position_ids, attention_mask, retrieved_ids=retrieved, labels=labels)
    blank_loss = None
    if not model.training:
        # Evaluation: the same tokens with every neighbour blanked (retrieved_ids=None).
        with torch.no_grad():
            blank_loss = model(tokens, position_ids, attention_mask, retrieved_ids=None, labels=labels)
    return output_tensor, partial(loss_func, loss_mask, blank_loss)


def train_valid_test_datasets_provider(train_val_test_num_samples):
    args = get_args()
    for name in ("retro_train_data", "retro_db", "retro_knn_map"):
        if getattr(args, name) is None:
            raise ValueError(f"pretrain_retro.py needs --{name.replace('_', '-')}")
    print_rank_0("> building train, validation, and test datasets for RETRO ...")
    return build_retro_datasets(args.retro_train_data, args.retro_db, args.retro_knn_map, args.split,
                                train_val_test_num_samples, args.seq_length, args.seed, args.retro_chunk_size,
                                args.retro_num_neighbors, tokenizer_pad_id(get_tokenizer()),
                                cache_dir=args.data_cache_path)


def main(argv=None):
    return pretrain(train_valid_test_datasets_provider, model_provider, ModelType.encoder_or_decoder, forward_step,
                    extra_args_provider=add_retro_args, args_defaults={"tokenizer_type": "GPT2BPETokenizer"},
                    argv=argv)


if __name__ == "__main__":
    main()
