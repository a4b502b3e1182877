"""Pretrain T5: span-corruption denoising, encoder and decoder, as Megatron-LM's pretrain_t5.py."""
from functools import partial

from megatron.core.datasets.builders import DatasetConfig, build_train_valid_test_datasets
from megatron.core.models import T5Model
from megatron.core.transformer import ModelType
from megatron.global_vars import get_args, get_timers, get_tokenizer
from megatron.model_setup import device_batch
from megatron.startup_checks import require_indexed_data
from megatron.training import pretrain
from megatron.utils import masked_mean, print_rank_0


def model_provider(pre_process=True, post_process=True, add_encoder=True, add_decoder=True):
    from megatron.config_from_args import core_transformer_config_from_args

    args = get_args()
    print_rank_0("building T5 model ...")
    return T5Model(core_transformer_config_from_args(args), vocab_size=args.padded_vocab_size,
                   max_sequence_length=args.max_position_embeddings, parallel_output=True,
                   pre_process=pre_process, post_process=post_process, add_encoder=add_encoder,
                   add_decoder=add_decoder, fp16_lm_cross_entropy=args.fp16_lm_cross_entropy)


def get_batch(data_iterator):
    data = device_batch(next(data_iterator))
    return (data["text_enc"].long(), data["text_dec"].long(), data["labels"].long(), data["loss_mask"].float(),
            data["enc_mask"].bool(), data["dec_mask"].bool(), data["enc_dec_mask"].bool())


def loss_func(loss_mask, output_tensor):
    lm_loss = masked_mean(output_tensor, loss_mask)
    return lm_loss, {"lm loss": lm_loss.detach()}


def forward_step(data_iterator, model):
    timers = get_timers()
    timers("batch-generator", log_level=2).start()
    tokens_enc, tokens_dec, lm_labels, loss_mask, enc_mask, dec_mask, enc_dec_mask = get_batch(data_iterator)
    timers("batch-generator", log_level=2).stop()
    output_tensor = model(tokens_enc, tokens_dec, enc_mask, dec_mask, enc_dec_mask, lm_labels=lm_labels)
    return output_tensor, partial(loss_func, loss_mask)


def train_valid_test_datasets_provider(train_val_test_num_samples):
    args = get_args()
    print_rank_0("> building train, validation, and test datasets for T5 ...")
    require_indexed_data(args, "pretrain_t5.py")
    config = DatasetConfig(dataset_type="t5", seq_length=args.encoder_seq_length, seed=args.seed, split=args.split,
                           cache_dir=args.data_cache_path, vocab_size=args.padded_vocab_size,
                           masked_lm_prob=args.mask_prob, short_seq_prob=args.short_seq_prob,
                           decoder_seq_length=args.decoder_seq_length)
    return build_train_valid_test_datasets(
        config, train_val_test_num_samples, tokenizer=get_tokenizer(), data_path=args.data_path,
        train_data_path=getattr(args, "train_data_path", None), valid_data_path=getattr(args, "valid_data_path", None),
        test_data_path=getattr(args, "test_data_path", None))


def main(argv=None):
    return pretrain(train_valid_test_datasets_provider, model_provider, ModelType.encoder_and_decoder, forward_step,
                    args_defaults={"tokenizer_type": "BertWordPieceLowerCase"}, argv=argv)


if __name__ == "__main__":
    main()
