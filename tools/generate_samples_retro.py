#!/usr/bin/env python
"""Generate text with a trained RETRO checkpoint, retrieving neighbours for every completed chunk.

    python tools/generate_samples_retro.py <the model and RETRO flags of pretrain_retro.py> \\
        --load checkpoints/retro --retro-db db_text_document --retro-index final.index \\
        --sentence_transformer_model all-MiniLM-L6-v2 --out-seq-length 64 --greedy \\
        (--num-samples 8 | --sample-input-file prompts.txt) --genfile samples.jsonl

The options of tools/generate_samples_gpt.py, plus: ``--retro-index`` (the faiss index over the
database, as tools/retro/build_retrieval_index.py wrote it), ``--sentence_transformer_model`` (the
encoder the index was built with; only installed copies), ``--retro-nprobe`` and
``--retro-no-retrieval`` (every neighbour blank: the model without retrieval). Each chunk of
``--retro-chunk-size`` tokens, prompt tokens included, is embedded once it is complete and its
``--retro-num-neighbors`` nearest database chunks condition the tokens after it. Decoding
recomputes the prefix at every step, so ``--recompute`` changes nothing here.
"""
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def add_args(parser):
    from megatron.argument_groups import add_retro_args
    from tools.generate_samples_gpt import add_generate_args

    add_generate_args(parser)
    add_retro_args(parser)
    group = parser.add_argument_group(title="retrieval at generation")
    group.add_argument("--retro-index", default=None, help="faiss index over the --retro-db chunks.")
    group.add_argument("--sentence_transformer_model", "--sentence-transformer-model",
                       dest="sentence_transformer_model", default="all-MiniLM-L6-v2",
                       help="Encoder the index was built with (a local directory or an installed model name).")
    group.add_argument("--retro-nprobe", type=int, default=None, help="IVF lists searched per query.")
    group.add_argument("--retro-no-retrieval", action="store_true",
                       help="Blank every neighbour (all padding): generation without retrieval.")
    return parser


def retro_inference_model_provider(pre_process=True, post_process=True):
    from megatron.config_from_args import core_transformer_config_from_args
    from megatron.core.models.retro import RetroModel
    from megatron.global_vars import get_args, get_tokenizer
    from pretrain_retro import retro_config_from_args, tokenizer_pad_id

    args = get_args()
    config = core_transformer_config_from_args(args)
    config.sequence_parallel = False  # whole sequences on every rank; the weights are the same
    return RetroModel(config, retro_config_from_args(args, tokenizer_pad_id(get_tokenizer())),
                      vocab_size=args.padded_vocab_size, max_sequence_length=args.max_position_embeddings,
                      pre_process=pre_process, post_process=post_process, parallel_output=False)


def build_retriever(args, tokenizer):
    if args.retro_no_retrieval:
        return None
    from megatron.core.datasets.retro_indexed_dataset import RetrievalIndexedDataset
    from megatron.retrieval.retro_embed import load_sentence_transformer
    from megatron.retrieval.retro_index import read_index
    from megatron.text_generation.retro import FaissRetriever

    if not args.retro_db or not args.retro_index:
        raise ValueError("retrieval needs --retro-db and --retro-index (or --retro-no-retrieval)")
    if not os.path.isfile(args.retro_index):
        raise ValueError(f"--retro-index {args.retro_index} does not exist")
    db = RetrievalIndexedDataset(args.retro_db)
    if not db.retrieval_db or db.chunk_size != args.retro_chunk_size:
        raise ValueError(f"--retro-db {args.retro_db}: a retrieval DB with chunks of {args.retro_chunk_size} is "
                         f"needed (it has retrieval_db={db.retrieval_db}, chunk size {db.chunk_size})")
    return FaissRetriever(db, read_index(args.retro_index), load_sentence_transformer(args.sentence_transformer_model),
                          tokenizer, args.retro_num_neighbors, args.retro_nprobe)


def main(argv=None) -> int:

    from megatron.checkpointing import load_checkpoint
    from megatron.core import parallel_state
    from megatron.core.transformer import ModelType
    from megatron.global_vars import get_tokenizer
    from megatron.initialize import initialize_megatron
    from megatron.model_setup import get_model
    from megatron.text_generation.cli import (GENERATION_DEFAULTS, sampling_generator, sampling_params_from_args,
                                              write_genfile)
    from megatron.text_generation.retro import generate_retro
    from megatron.utils import print_rank_0
    from tools.generate_samples_gpt import check_args, prompts_from_args

    args = initialize_megatron(add_args, GENERATION_DEFAULTS, argv=argv)
    tool = "generate_samples_retro.py"
    try:
        check_args(args)
        tokenizer = get_tokenizer()
        max_length = args.max_position_embeddings
        prompts = prompts_from_args(args, tokenizer)
        retriever = build_retriever(args, tokenizer)
        args.no_load_optim = args.no_load_rng = True
        pg = parallel_state.get_process_groups()
        chunks = get_model(retro_inference_model_provider, ModelType.encoder_or_decoder, args, pg, wrap_with_ddp=False)
        load_checkpoint(chunks, None, None, args)
        if not os.path.isfile(os.path.join(args.load, "latest_checkpointed_iteration.txt")):
            raise ValueError(f"--load {args.load} holds no checkpoint (no latest_checkpointed_iteration.txt)")
    except ValueError as error:
        print(f"{tool}: error: {error}", file=sys.stderr, flush=True)
        return 2
    if args.recompute:
        print_rank_0("notice: --recompute has no effect: RETRO generation always recomputes the prefix")
    model = chunks[0]
    model.eval()
    params = sampling_params_from_args(args)
    generator = sampling_generator(args.seed)
    eod = getattr(tokenizer, "eod", None)
    results = []
    for prompt in prompts:
        ids = tokenizer.tokenize(prompt) if prompt else [eod]
        out = generate_retro(model, ids, args.out_seq_length, params, retriever, max_length, eod=eod,
                             vocab_size=tokenizer.vocab_size, generator=generator, pg=pg)
        generated = out[len(ids):]
        finished = bool(generated) and eod is not None and generated[-1] == eod
        text_ids = [t for t in (ids if prompt else []) + generated if t != eod]
        results.append({"prompt": prompt, "text": tokenizer.detokenize(text_ids), "length": len(generated),
                        "finished": finished})
    write_genfile(args.genfile, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
