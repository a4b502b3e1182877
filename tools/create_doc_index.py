"""Embed every evidence block of a corpus with an ICT biencoder's context tower.

    torchrun --nproc_per_node 8 tools/create_doc_index.py \\
        --num-layers 12 --hidden-size 768 --num-attention-heads 12 --max-position-embeddings 512 \\
        --seq-length 256 --batch-size 128 --ict-load CHECKPOINTS/ict --tokenizer-type BertWordPieceLowerCase \\
        --vocab-file bert-vocab.txt --data-path wiki_text_sentence --titles-data-path wiki_title_sentence \\
        --block-data-path embedded_blocks.pkl --indexer-batch-size 128 --indexer-log-interval 1000 --fp16

The corpus is either this project's ICT blocks (``--data-path`` body + ``--titles-data-path``, blocks
of ``--seq-length`` tokens) or a DPR evidence TSV (``--evidence-data-path``, passages of
``--retriever-seq-length`` tokens). Every data-parallel rank embeds a contiguous share and writes a
shard; rank 0 merges them into ``--block-data-path`` after checking that every block is there
exactly once. A path ending in ``.pkl`` gets Megatron's pickle; any other path the memory-mappable
store directory (see ``megatron/retrieval/block_store.py`` for both formats).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    from megatron.argument_groups import add_biencoder_args
    from megatron.initialize import initialize_megatron

    import torch.distributed as dist

    from megatron.core import parallel_state
    from megatron.errors import input_errors_in_one_line
    from megatron.global_vars import get_tokenizer
    from megatron.retrieval.indexer import IndexBuilder, block_corpus_from_args

    # Flags, input files, checkpoints and shard coverage are the user's to fix: one line.
    with input_errors_in_one_line("create_doc_index.py"):
        args = initialize_megatron(extra_args_provider=add_biencoder_args,
                                   args_defaults={"tokenizer_type": "BertWordPieceLowerCase"}, argv=argv)
        corpus = block_corpus_from_args(args, get_tokenizer())
        if args.rank == 0:
            print(f"> indexing {len(corpus)} blocks on {parallel_state.get_process_groups().data_parallel_size} "
                  f"data-parallel rank(s) into {args.block_data_path}", flush=True)
        total = IndexBuilder.from_args(args, parallel_state.get_process_groups(), corpus).build_and_save_index()
    if dist.is_initialized():
        dist.barrier()
    return total


if __name__ == "__main__":
    main()
