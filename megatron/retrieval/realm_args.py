"""The flags of ``pretrain_realm.py``: the retriever flags (``add_biencoder_args``) plus REALM's own,
and their checks (one line naming the flag)."""
from megatron.argument_groups import add_biencoder_args
from megatron.core.datasets.realm_dataset import MASKING_STYLES

REFRESH_MODES = ("sync", "async")


def add_realm_args(parser):
    add_biencoder_args(parser)
    group = parser.add_argument_group(title="REALM (retrieval-augmented masked-LM pretraining)")
    group.add_argument("--realm-num-candidates", type=int, default=8,
                       help="Documents scored per query: the null document plus this many minus one retrieved "
                            "blocks (REALM: 8); 1 trains the reader alone on the same queries (no retrieval).")
    group.add_argument("--query-seq-length", type=int, default=96,
                       help="Tokens of a query ([CLS] sentence [SEP]); the reader's joint input is "
                            "query-seq-length + seq-length - 1 tokens (REALM: 96 + 288).")
    group.add_argument("--realm-max-masks", type=int, default=10,
                       help="Most masked tokens per query; longer salient spans are not used (REALM: 10).")
    group.add_argument("--masking-style", choices=MASKING_STYLES, default="salient",
                       help="Mask a salient span, a random span of the same length, or as many random tokens.")
    group.add_argument("--salient-span-json", default=None,
                       help="The loose JSON --data-path was preprocessed from: its 'salient_spans' (character "
                            "offsets) when present, else the text is tagged.")
    group.add_argument("--salient-span-json-key", default="text", help="JSON key of the text in --salient-span-json.")
    group.add_argument("--ner-model", default=None,
                       help="Installed spaCy pipeline for entities (e.g. en_core_web_sm); default: the "
                            "capitalisation heuristic.")
    group.add_argument("--index-refresh-interval", type=int, default=500,
                       help="Re-embed the blocks with the current context tower every this many iterations "
                            "(0: never; the index of --block-data-path or of the initial weights is kept).")
    group.add_argument("--index-refresh-mode", choices=REFRESH_MODES, default="sync",
                       help="sync: every data-parallel rank embeds a share, then all-gather (training pauses); "
                            "async: --index-refresh-ranks ranks embed while the others train on the previous index.")
    group.add_argument("--index-refresh-ranks", type=int, default=0,
                       help="Ranks of the job (the last ones) that only re-embed the blocks (--index-refresh-mode "
                            "async).")
    group.add_argument("--realm-mips", choices=("auto", "matmul", "faiss"), default="auto",
                       help="Top-k search: one matrix product, faiss (--faiss-index-factory), or auto "
                            "(matmul up to --realm-matmul-max-blocks blocks).")
    group.add_argument("--realm-matmul-max-blocks", type=int, default=65536,
                       help="Largest store searched by matrix product under --realm-mips auto.")
    return parser


def check_realm_args(args) -> None:
    """Raise ValueError naming the flag when REALM cannot run with ``args``."""
    if args.realm_num_candidates < 1:
        raise ValueError(f"--realm-num-candidates {args.realm_num_candidates}: needs at least the null document (1: "
                         f"the reader alone, no retrieval)")
    if args.realm_max_masks < 1:
        raise ValueError(f"--realm-max-masks {args.realm_max_masks} must be positive")
    if args.index_refresh_interval < 0:
        raise ValueError(f"--index-refresh-interval {args.index_refresh_interval} must be >= 0")
    if args.index_refresh_mode == "async":
        if args.index_refresh_ranks < 1:
            raise ValueError("--index-refresh-mode async needs --index-refresh-ranks 1 or more")
        if args.tensor_model_parallel_size != 1:
            raise ValueError(f"--index-refresh-mode async sends one rank's whole context tower: use "
                             f"--tensor-model-parallel-size 1, not {args.tensor_model_parallel_size}")
        if args.index_refresh_interval < 1:
            raise ValueError("--index-refresh-mode async needs --index-refresh-interval 1 or more")
        if args.realm_num_candidates < 2:
            raise ValueError("--index-refresh-mode async with --realm-num-candidates 1: there is no index to refresh")
    elif args.index_refresh_ranks:
        raise ValueError(f"--index-refresh-ranks {args.index_refresh_ranks} needs --index-refresh-mode async")
    if args.pipeline_model_parallel_size != 1:
        raise ValueError(f"--pipeline-model-parallel-size {args.pipeline_model_parallel_size}: REALM runs on one "
                         f"pipeline stage (use tensor or data parallelism)")
    if getattr(args, "sequence_parallel", False):
        raise ValueError("--sequence-parallel: REALM reads masked positions only; run without it")
    joint = args.query_seq_length + args.seq_length - 1
    if joint > args.max_position_embeddings:
        raise ValueError(f"--query-seq-length {args.query_seq_length} + --seq-length {args.seq_length} - 1 = {joint} "
                         f"joint tokens exceed --max-position-embeddings {args.max_position_embeddings}")
    if not args.salient_span_json:
        raise ValueError("--salient-span-json is required: the loose JSON --data-path was preprocessed from")
    if not args.titles_data_path:
        raise ValueError("--titles-data-path is required: the titles of the evidence blocks")
    if not args.data_path or len(args.data_path) != 1:
        raise ValueError("--data-path takes one sentence-split dataset prefix for REALM (queries and evidence)")
