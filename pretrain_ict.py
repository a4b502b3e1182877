"""Pretrain an ICT retriever (ORQA's Inverse Cloze Task), as Megatron-LM's pretrain_ict.py.

A biencoder (query tower, context tower; or one shared tower) embeds pseudo-queries (a sentence
of a block) and their blocks (``[CLS] title [SEP] block [SEP]``); the loss is an in-batch softmax
over query-context scores, negatives all-gathered from every data-parallel rank
(``megatron/retrieval/ict_loss.py``). ``top{k}_acc`` (``--retriever-report-topk-accuracies``) is
reported with the loss on iteration and validation lines.

``--bert-load DIR`` starts both towers from a ``pretrain_bert.py`` checkpoint, saved at any
tensor/pipeline layout, unless ``--load`` already holds a checkpoint (then the run resumes from it,
as in Megatron-LM). Projection layers (``--ict-head-size`` / ``--biencoder-projection-dim``) start
freshly initialised, each tower from its own seed. Towers may be tensor-parallel; the biencoder
runs on one pipeline stage.
"""
import os
import sys

import torch

from megatron.argument_groups import add_biencoder_args
from megatron.checkpointing import CheckpointError, get_checkpoint_tracker_filename
from megatron.core.datasets.builders import DatasetConfig, build_train_valid_test_datasets
from megatron.core.transformer import ModelType
from megatron.global_vars import get_args, get_timers, get_tokenizer
from megatron.initialize import get_device
from megatron.retrieval.biencoder_setup import biencoder_model_provider, init_towers_from_bert
from megatron.retrieval.ict_loss import ict_loss
from megatron.startup_checks import require_indexed_data
from megatron.training import pretrain
from megatron.utils import print_rank_0


class ICTSetupError(ValueError):
    """A configuration pretrain_ict.py cannot run; reported as one line."""


def _resuming(args) -> bool:
    return bool(args.load) and os.path.isfile(get_checkpoint_tracker_filename(args.load))


def model_provider(pre_process=True, post_process=True):
    from megatron.core import parallel_state

    args = get_args()
    if args.pipeline_model_parallel_size != 1:
        raise ICTSetupError(f"--pipeline-model-parallel-size {args.pipeline_model_parallel_size}: the ICT "
                            f"biencoder runs on one pipeline stage (use tensor or data parallelism)")
    print_rank_0("building the ICT biencoder ...")
    model = biencoder_model_provider()(pre_process, post_process)
    if args.bert_load:
        if _resuming(args):
            print_rank_0(f"> --load {args.load} holds a checkpoint: resuming from it, --bert-load not used")
        else:
            print_rank_0(f"> initialising the towers' embeddings and encoders from the BERT checkpoint "
                         f"{args.bert_load} (projection layers stay freshly initialised)")
            init_towers_from_bert(model, args.bert_load, args, parallel_state.get_process_groups())
    return model


def get_batch(data_iterator):
    """Query and context tokens ``[b, s]`` with their pad masks (1 = real token), on the device."""
    data = next(data_iterator)
    device = get_device()
    return tuple(data[key].to(device, non_blocking=True).long()
                 for key in ("query_tokens", "query_pad_mask", "context_tokens", "context_pad_mask"))


def loss_func(output_tensor):
    from megatron.core import parallel_state

    args = get_args()
    pg = parallel_state.get_process_groups()
    query_logits, context_logits = output_tensor
    dp_group = pg.dp if pg.data_parallel_size > 1 else None
    loss, metrics = ict_loss(query_logits, context_logits, dp_group,
                             score_scaling_hidden_size=args.hidden_size if args.retriever_score_scaling else None,
                             topk=args.retriever_report_topk_accuracies)
    return loss, metrics


def forward_step(data_iterator, model):
    timers = get_timers()
    timers("batch-generator", log_level=2).start()
    query_tokens, query_pad_mask, context_tokens, context_pad_mask = get_batch(data_iterator)
    timers("batch-generator", log_level=2).stop()
    # Token types are all zero in ICT; the towers keep two types so that BERT checkpoints load.
    query_types, context_types = torch.zeros_like(query_tokens), torch.zeros_like(context_tokens)
    output_tensor = model(query_tokens, query_pad_mask, query_types, context_tokens, context_pad_mask, context_types)
    return output_tensor, loss_func


def train_valid_test_datasets_provider(train_val_test_num_samples):
    args = get_args()
    print_rank_0("> building train, validation, and test datasets for ICT ...")
    require_indexed_data(args, "pretrain_ict.py")
    if not args.titles_data_path:
        raise ICTSetupError("--titles-data-path is required: the titles dataset (one title per document of "
                            "--data-path, preprocessed with --json-keys title)")
    config = DatasetConfig(dataset_type="ict", seq_length=args.seq_length, seed=args.seed, split=args.split,
                           cache_dir=args.data_cache_path, vocab_size=args.padded_vocab_size, query_in_block_prob=args.query_in_block_prob,
                           use_one_sent_docs=args.use_one_sent_docs, titles_data_path=args.titles_data_path)
    return build_train_valid_test_datasets(
        config, train_val_test_num_samples, tokenizer=get_tokenizer(), data_path=args.data_path,
        train_data_path=getattr(args, "train_data_path", None), valid_data_path=getattr(args, "valid_data_path", None),
        test_data_path=getattr(args, "test_data_path", None))


def main(argv=None):
    try:
        return pretrain(train_valid_test_datasets_provider, model_provider, ModelType.encoder_or_decoder,
                        forward_step, extra_args_provider=add_biencoder_args,
                        args_defaults={"tokenizer_type": "BertWordPieceLowerCase"}, argv=argv)
    except (ICTSetupError, CheckpointError) as error:
        # The user's to fix (flags, checkpoint files): one line, as argparse reports its errors.
        print(f"{os.path.basename(sys.argv[0]) or 'pretrain_ict.py'}: error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
