"""Pretrain GPT: Megatron-LM's command line (``python pretrain_gpt.py --num-layers ... --data-path ...``)."""
from functools import partial

from megatron.core.datasets.builders import DatasetConfig, build_train_valid_test_datasets
from megatron.core.models import GPTModel
from megatron.core.transformer import ModelType
from megatron.global_vars import get_args, get_timers, get_tokenizer
from megatron.model_setup import device_batch
from megatron.startup_checks import require_indexed_data
from megatron.training import pretrain
from megatron.utils import causal_lm_batch, masked_mean, print_rank_0


def model_provider(pre_process=True, post_process=True):
    """One pipeline stage of GPT (the whole model without pipelining)."""
    from megatron.config_from_args import core_transformer_config_from_args

    args = get_args()
    print_rank_0("building GPT model ...")
    return GPTModel(core_transformer_config_from_args(args), vocab_size=args.padded_vocab_size,
                    max_sequence_length=args.max_position_embeddings, pre_process=pre_process,
                    post_process=post_process, parallel_output=True,
                    fp16_lm_cross_entropy=args.fp16_lm_cross_entropy)


def get_batch(data_iterator):
    """tokens, labels (tokens shifted by one), loss mask, attention mask, position ids."""
    return causal_lm_batch(device_batch(next(data_iterator))["text"], get_tokenizer(), get_args())


def loss_func(loss_mask, output_tensor):
    """Per-token loss [b, s] -> mean over the tokens the loss mask keeps."""
    loss = masked_mean(output_tensor, loss_mask)
    return loss, {"lm loss": loss.detach()}


def forward_step(data_iterator, model):
    timers = get_timers()
    timers("batch-generator", log_level=2).start()
    tokens, labels, loss_mask, attention_mask, position_ids = get_batch(data_iterator)
    timers("batch-generator", log_level=2).stop()
    output_tensor = model(tokens, position_ids, attention_mask, labels=labels)
    return output_tensor, partial(loss_func, loss_mask)


def train_valid_test_datasets_provider(train_val_test_num_samples):
    args = get_args()
    print_rank_0("> building train, validation, and test datasets for GPT ...")
    require_indexed_data(args, "pretrain_gpt.py")
    config = DatasetConfig(dataset_type="gpt", seq_length=args.seq_length, seed=args.seed, split=args.split,
                           cache_dir=args.data_cache_path, vocab_size=args.padded_vocab_size)
    return build_train_valid_test_datasets(
        config, train_val_test_num_samples, tokenizer=None, data_path=args.data_path,
        train_data_path=getattr(args, "train_data_path", None), valid_data_path=getattr(args, "valid_data_path", None),
        test_data_path=getattr(args, "test_data_path", None))


def main(argv=None):
    return pretrain(train_valid_test_datasets_provider, model_provider, ModelType.encoder_or_decoder, forward_step,
                    args_defaults={"tokenizer_type": "GPT2BPETokenizer"}, argv=argv)


if __name__ == "__main__":
    main()
