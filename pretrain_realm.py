"""Pretrain REALM: retrieval-augmented masked-LM pretraining with a refreshed MIPS index (Guu et al., 2020).

Queries are sentences of ``--data-path`` (sentence-split, as for ICT) with one salient span masked
(``megatron/core/datasets/realm_dataset.py``; spans from ``--salient-span-json``). Each step embeds
the queries with the retriever's query tower (``--ict-load``), takes the top blocks of the evidence
index (``--data-path`` + ``--titles-data-path`` blocks, embedded by ``tools/create_doc_index.py``
into ``--block-data-path`` or by the run itself), drops the blocks of the query's own document,
prepends the null document, and minimises the negative marginal log-likelihood of the masked
tokens under the reader (``--bert-load``) over the ``--realm-num-candidates`` documents
(``megatron/core/models/realm.py``). Every ``--index-refresh-interval`` iterations the blocks are
re-embedded with the current context tower (``megatron/retrieval/realm_setup.py``).

Iteration and validation lines carry ``marginal loss``, ``retrieval_utility`` (marginal
log-likelihood minus the null document's alone), ``masked_span_acc`` / ``masked_token_acc``,
``source_doc_in_topk`` (percent of queries with a block of their own document among the top
blocks before it is dropped), ``null_doc_prob``, ``index staleness`` (iterations since the weights
that built the index) and ``index refresh s`` (seconds of the latest build).

Checkpoints hold both towers and the reader (``retriever.`` / ``reader.``); a resumed run
searches the index the uninterrupted run searched (see ``realm_setup.IndexState``).
"""
import os
import sys
from functools import partial

import numpy as np
import torch

from megatron.checkpointing import CheckpointError, unwrap_model
from megatron.core.transformer import ModelType
from megatron.global_vars import get_args, get_timers, get_tokenizer
from megatron.initialize import get_device
from megatron.retrieval.realm_args import add_realm_args, check_realm_args
from megatron.training import pretrain
from megatron.utils import print_rank_0

_INDEX_STATE = None


class REALMSetupError(ValueError):
    """A configuration pretrain_realm.py cannot run; reported as one line."""


def model_provider(pre_process=True, post_process=True):
    from megatron.config_from_args import core_transformer_config_from_args
    from megatron.core import parallel_state
    from megatron.retrieval.realm_setup import build_realm_model, load_reader, load_retriever, resuming

    args = get_args()
    try:
        check_realm_args(args)
    except ValueError as error:
        raise REALMSetupError(str(error)) from None
    if args.realm_num_candidates == 1:
        unused = [flag for flag, value in (("--block-data-path", args.block_data_path),
                                           ("--index-refresh-interval", args.index_refresh_interval)) if value]
        print_rank_0("> --realm-num-candidates 1: no retrieval, the reader reads each query alone (the null "
                     "document)" + (f"; {' and '.join(unused)} not used" if unused else ""))
    print_rank_0("building the REALM retriever (ICT biencoder) and reader (BERT) ...")
    model = build_realm_model(args, core_transformer_config_from_args(args), get_tokenizer())
    if resuming(args):
        print_rank_0(f"> --load {args.load} holds a checkpoint: resuming from it, --ict-load and --bert-load not used")
    else:
        pg = parallel_state.get_process_groups()
        print_rank_0(f"> retriever from the ICT checkpoint {args.ict_load}, reader from the BERT checkpoint "
                     f"{args.bert_load}")
        load_retriever(model, args.ict_load, args, pg)
        load_reader(model, args.bert_load, args, pg)
    return model


def _index_state():
    global _INDEX_STATE
    if _INDEX_STATE is None:
        from megatron.core import parallel_state
        from megatron.retrieval.evidence import BlockCorpus
        from megatron.retrieval.realm_setup import IndexState

        args = get_args()
        corpus = BlockCorpus(args.data_path[0], args.titles_data_path, args.seq_length, args.seed, get_tokenizer(),
                             use_one_sent_docs=args.use_one_sent_docs, cache_dir=args.data_cache_path)
        _INDEX_STATE = IndexState(args, parallel_state.get_process_groups(), corpus, get_device())
    return _INDEX_STATE


def loss_func(state, own_doc_in_topk, output_tensor):
    loss, metrics = output_tensor
    args = get_args()
    device = loss.device
    reported = {"marginal loss": loss.detach()}
    reported.update({key: value.detach() for key, value in metrics.items()})
    if state is None:  # --realm-num-candidates 1: the reader alone, no index
        return loss, reported
    own = np.concatenate(own_doc_in_topk) if own_doc_in_topk else np.zeros(0, bool)
    reported["source_doc_in_topk"] = torch.tensor(float(own.mean()) * 100.0 if len(own) else 0.0, device=device)
    reported["index staleness"] = torch.tensor(float(args.iteration - state.index.built_at), device=device)
    reported["index refresh s"] = torch.tensor(state.timer.last_seconds, device=device)
    return loss, reported


def _null_document(batch: int, seq_length: int, device):
    """``[batch, 1, seq_length]`` tokens and pad masks of the empty block ``[CLS] [SEP]``."""
    tokenizer = get_tokenizer()
    tokens = torch.full((batch, 1, seq_length), tokenizer.pad, dtype=torch.long)
    tokens[:, 0, 0], tokens[:, 0, 1] = tokenizer.cls, tokenizer.sep
    pad_mask = torch.zeros_like(tokens)
    pad_mask[:, 0, :2] = 1
    return tokens.to(device), pad_mask.to(device)


def forward_step(data_iterator, model):
    args = get_args()
    timers = get_timers()
    timers("batch-generator", log_level=2).start()
    batch = next(data_iterator)
    device = get_device()
    inputs = {key: batch[key].to(device).long() for key in
              ("query_tokens", "query_pad_mask", "mask_positions", "mask_labels", "mask_valid")}
    query_docs = batch["query_doc"].long()
    timers("batch-generator", log_level=2).stop()

    core = unwrap_model(model)
    own_doc_in_topk = []
    if args.realm_num_candidates == 1:
        # No retrieval: every query reads the null document only, i.e. the reader alone on the query.
        state = None

        def retrieve(query_embeddings):
            tokens, pad_mask = _null_document(query_embeddings.shape[0], args.seq_length, device)
            return tokens, pad_mask

        output = model(inputs["query_tokens"], inputs["query_pad_mask"], inputs["mask_positions"],
                       inputs["mask_labels"], inputs["mask_valid"], retrieve=retrieve)
        return output, partial(loss_func, state, own_doc_in_topk)

    state = _index_state()
    state.prepare(core, args.iteration, training=core.training)

    def retrieve(query_embeddings):
        positions, own = state.index.search(query_embeddings, query_docs, args.realm_num_candidates - 1)
        own_doc_in_topk.append(own)
        tokens, pad_mask = state.index.candidate_tokens(positions)
        return tokens.to(device), pad_mask.to(device)

    output = model(inputs["query_tokens"], inputs["query_pad_mask"], inputs["mask_positions"], inputs["mask_labels"],
                   inputs["mask_valid"], retrieve=retrieve)
    return output, partial(loss_func, state, own_doc_in_topk)


def train_valid_test_datasets_provider(train_val_test_num_samples):
    from megatron.core.datasets.builders import open_indexed_dataset
    from megatron.core.datasets.realm_dataset import REALMDataset, load_or_build_span_table
    from megatron.core.datasets.splits import split_boundaries
    from megatron.preprocessing.salient_spans import SalientSpanTagger

    args = get_args()
    try:
        check_realm_args(args)
    except ValueError as error:
        raise REALMSetupError(str(error)) from None
    prefix = args.data_path[0]
    print_rank_0("> building train, validation, and test datasets for REALM ...")
    body = open_indexed_dataset(prefix)
    tagger = SalientSpanTagger(args.ner_model)
    print_rank_0(f"> salient spans: the corpus's salient_spans where given, else {tagger.method}; "
                 f"masking style {args.masking_style}")
    table = load_or_build_span_table(prefix, args.salient_span_json, args.salient_span_json_key, body,
                                     get_tokenizer(), tagger, cache_dir=args.data_cache_path)
    num_docs = len(body.doc_idx) - 1
    bounds = split_boundaries(args.split, num_docs)
    datasets = []
    for i, name in enumerate(("train", "valid", "test")):
        if not train_val_test_num_samples[i]:
            datasets.append(None)
            continue
        if bounds[i + 1] <= bounds[i]:
            raise REALMSetupError(f"{prefix}: the {name} split of --split {args.split} is empty ({num_docs} "
                                  f"documents) but {train_val_test_num_samples[i]} {name} samples are needed")
        datasets.append(REALMDataset(name, body, table, (bounds[i], bounds[i + 1]), train_val_test_num_samples[i],
                                     args.query_seq_length, args.masking_style, args.realm_max_masks, args.seed,
                                     get_tokenizer()))
    return tuple(datasets)


ARGS_DEFAULTS = {"tokenizer_type": "BertWordPieceLowerCase"}


def _refresh_ranks(argv) -> int:
    """``--index-refresh-ranks`` from the command line, read before Megatron starts (it decides the worlds)."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--index-refresh-ranks", type=int, default=0)
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return known.index_refresh_ranks


def refresher_main(index: int, argv=None) -> int:
    """A refresh rank: the context tower only, embedding the blocks whenever trainer 0 asks."""
    import contextlib
    import io

    from megatron.arguments import parse_args
    from megatron.core import parallel_state
    from megatron.global_vars import set_global_variables
    from megatron.retrieval.biencoder_setup import biencoder_model_provider
    from megatron.retrieval.evidence import BlockCorpus
    from megatron.retrieval.realm_async import run_refresher

    # The flags are the trainers' (validated against their world); only the sizes and data are used here.
    own = os.environ["RANK"], os.environ["WORLD_SIZE"]
    os.environ["RANK"], os.environ["WORLD_SIZE"] = "0", os.environ["MEGATRON_REALM_TRAINERS"]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            args = parse_args(add_realm_args, ARGS_DEFAULTS, argv=argv)
    finally:
        os.environ["RANK"], os.environ["WORLD_SIZE"] = own
    set_global_variables(args)
    try:
        check_realm_args(args)
    except ValueError as error:
        raise REALMSetupError(str(error)) from None
    parallel_state.initialize_model_parallel(1, 1)
    torch.manual_seed(args.seed)
    tower = biencoder_model_provider(only_context_model=True)().towers()[1]
    tower.eval()
    corpus = BlockCorpus(args.data_path[0], args.titles_data_path, args.seq_length, args.seed, get_tokenizer(),
                         use_one_sent_docs=args.use_one_sent_docs, cache_dir=args.data_cache_path)

    def embed(tokens, pad_mask):
        return tower(tokens, pad_mask, torch.zeros_like(tokens))

    if index == 0:
        print(f"> refresher: {args.index_refresh_ranks} refresh rank(s) ready for {len(corpus)} blocks", flush=True)
    return run_refresher(args, index, corpus, tower, embed)


def main(argv=None):
    from megatron.core.datasets.realm_dataset import SalientSpanDataError
    from megatron.preprocessing.salient_spans import SalientSpanError
    from megatron.retrieval.realm_async import AsyncRefreshError, split_job
    from megatron.retrieval.realm_index import REALMIndexError

    try:
        refresh_ranks = _refresh_ranks(argv)
        refresher = split_job(refresh_ranks) if refresh_ranks > 0 else None
        if refresher is not None:
            return refresher_main(refresher, argv)
        iteration = pretrain(train_valid_test_datasets_provider, model_provider, ModelType.encoder_or_decoder,
                             forward_step, extra_args_provider=add_realm_args, args_defaults=ARGS_DEFAULTS, argv=argv)
        if _INDEX_STATE is not None:
            _INDEX_STATE.shutdown()
        return iteration
    except (REALMSetupError, CheckpointError, SalientSpanError, SalientSpanDataError, REALMIndexError,
            AsyncRefreshError, FileNotFoundError) as error:
        # The user's to fix (flags, data, checkpoint files): one line, as argparse reports its errors.
        print(f"{os.path.basename(sys.argv[0]) or 'pretrain_realm.py'}: error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
