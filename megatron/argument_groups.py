"""Megatron-LM's command-line flags, group by group, with Megatron's names and defaults.

Only the declarations live here; ``megatron/arguments.py`` resolves old spellings, derives
values and validates. Deprecated 2020/2021 spellings get their own destinations so that the
validator can tell them apart from (and check them against) the current ones.
"""
import argparse

from megatron.tokenizer.build import TOKENIZER_TYPES


def _add_network_size_args(parser):
    group = parser.add_argument_group(title="network size")
    group.add_argument("--num-layers", type=int, default=None, help="Number of transformer layers.")
    group.add_argument("--hidden-size", type=int, default=None, help="Transformer hidden size.")
    group.add_argument("--ffn-hidden-size", type=int, default=None,
                       help="MLP inner size; 4 x hidden size when not given (with --swiglu: 8/3 x hidden size "
                            "rounded down to a multiple of 64, as Megatron).")
    group.add_argument("--num-attention-heads", type=int, default=None, help="Number of attention heads.")
    group.add_argument("--kv-channels", type=int, default=None,
                       help="Projection size per head; hidden size / heads when not given.")
    group.add_argument("--max-position-embeddings", type=int, default=None,
                       help="Size of the learned position-embedding table (longest sequence).")
    group.add_argument("--position-embedding-type", default="learned_absolute",
                       choices=["learned_absolute", "rope", "none"],
                       help="Learned absolute position embeddings, rotary embeddings inside attention, or none "
                            "(the causal mask alone carries order).")
    group.add_argument("--no-position-embedding", action="store_false", dest="add_position_embedding",
                       help="No learned position-embedding table (older spelling; with rope it is implied, "
                            "otherwise it means --position-embedding-type none).")
    group.add_argument("--use-rotary-position-embeddings", action="store_true",
                       help="Same as --position-embedding-type rope.")
    group.add_argument("--rotary-percent", type=float, default=1.0,
                       help="Fraction of each head's channels that rotary embeddings rotate.")
    group.add_argument("--rotary-base", type=float, default=10000.0,
                       help="Base of the rotary frequencies (Llama 2: 10000, Llama 3: 500000).")
    group.add_argument("--group-query-attention", action="store_true",
                       help="Grouped-query attention: --num-query-groups key/value heads shared by the query heads.")
    group.add_argument("--num-query-groups", type=int, default=None,
                       help="Key/value heads with --group-query-attention (default 1: multi-query attention).")
    group.add_argument("--swiglu", action="store_true",
                       help="SwiGLU MLP: SiLU(x W_gate) * (x W_up), then the down projection.")
    group.add_argument("--normalization", default="LayerNorm", choices=["LayerNorm", "RMSNorm"],
                       help="Norm of every layer and the final norm.")
    group.add_argument("--norm-epsilon", type=float, default=None,
                       help="Epsilon of the norms (megatron-core spelling of --layernorm-epsilon).")
    group.add_argument("--disable-bias-linear", action="store_false", dest="add_bias_linear",
                       help="No biases in the QKV, attention output and MLP projections.")
    group.add_argument("--untie-embeddings-and-output-weights", action="store_true",
                       help="GPT: an output layer of its own instead of the transposed word embeddings.")
    group.add_argument("--use-mup", action="store_true",
                       help="Maximal-update parametrisation (muP): hyper-parameters tuned at --mup-base-hidden-size "
                            "carry over to this width (init, Adam learning rates per parameter, logit and attention "
                            "scaling; megatron/core/mup.py). Needs --optimizer adam.")
    group.add_argument("--mup-base-hidden-size", type=int, default=None,
                       help="muP: hidden size of the base model (the width the hyper-parameters were tuned at).")
    group.add_argument("--mup-base-num-attention-heads", type=int, default=None,
                       help="muP: attention heads of the base model (default: --num-attention-heads, so width grows "
                            "the head size).")
    group.add_argument("--mup-base-ffn-hidden-size", type=int, default=None,
                       help="muP: MLP width of the base model (default: --ffn-hidden-size x base / hidden size).")
    group.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                       help="Pad the vocabulary to a multiple of this x tensor-parallel size.")
    group.add_argument("--layernorm-epsilon", type=float, default=1e-5, help="LayerNorm epsilon.")
    group.add_argument("--apply-residual-connection-post-layernorm", action="store_true",
                       help="Take the residual from after the LayerNorm (original BERT) instead of before.")
    group.add_argument("--openai-gelu", action="store_true",
                       help="Use the tanh approximation of GeLU (as OpenAI's GPT) instead of the exact erf form.")
    group.add_argument("--onnx-safe", action="store_true",
                       help="Accepted for Megatron's command lines; no effect (a one-line note says so): Megatron's "
                            "effect, the explicit erf GeLU on the unfused path, is what the core always computes.")
    group.add_argument("--bert-no-binary-head", action="store_false", dest="bert_binary_head",
                       help="BERT without the next-sentence (binary) head.")
    group.add_argument("--vocab-size", type=int, default=None,
                       help="Vocabulary size (before --vocab-extra-ids and padding) for runs without tokenizer "
                            "files, e.g. --dry-run.")


def _add_regularization_args(parser):
    group = parser.add_argument_group(title="regularization")
    group.add_argument("--attention-dropout", type=float, default=0.1, help="Dropout on attention probabilities.")
    group.add_argument("--hidden-dropout", type=float, default=0.1, help="Dropout on the residual branches.")
    group.add_argument("--weight-decay", type=float, default=0.01, help="L2 (decoupled) weight decay coefficient.")
    group.add_argument("--start-weight-decay", type=float, default=None,
                       help="Weight decay at the start of training (with --weight-decay-incr-style).")
    group.add_argument("--end-weight-decay", type=float, default=None, help="Weight decay at the end of training.")
    group.add_argument("--weight-decay-incr-style", default="constant", choices=["constant", "linear", "cosine"],
                       help="How weight decay moves from its start to its end value.")
    group.add_argument("--clip-grad", type=float, default=1.0, help="Clip gradients to this global norm (0: off).")
    group.add_argument("--adam-beta1", type=float, default=0.9, help="Adam beta1.")
    group.add_argument("--adam-beta2", type=float, default=0.999, help="Adam beta2.")
    group.add_argument("--adam-eps", type=float, default=1e-8, help="Adam epsilon.")
    group.add_argument("--sgd-momentum", type=float, default=0.9, help="SGD momentum.")


def _add_training_args(parser):
    group = parser.add_argument_group(title="training")
    group.add_argument("--micro-batch-size", type=int, default=None,
                       help="Samples per micro-batch per data-parallel rank.")
    group.add_argument("--batch-size", type=int, default=None, dest="batch_size",
                       help="2020 spelling of --micro-batch-size.")
    group.add_argument("--global-batch-size", type=int, default=None,
                       help="Samples per iteration over all ranks; micro x data-parallel size when not given.")
    group.add_argument("--rampup-batch-size", nargs="*", default=None, metavar="N",
                       help="START INCREMENT SAMPLES: grow the global batch from START by INCREMENT over SAMPLES "
                            "samples (sample-based training only).")
    group.add_argument("--recompute-activations", action="store_true",
                       help="Selective recomputation (core attention only); same as --recompute-granularity selective.")
    group.add_argument("--recompute-granularity", default=None, choices=["full", "selective"],
                       help="full: recompute whole layers; selective: only the core attention.")
    group.add_argument("--recompute-method", default=None, choices=["uniform", "block"],
                       help="With full recomputation: uniform groups of layers, or the first N layers of a stage.")
    group.add_argument("--recompute-num-layers", type=int, default=None,
                       help="Layers per recomputed group (uniform) or recomputed layers per stage (block); default 1.")
    group.add_argument("--activations-checkpoint-method", default=None, choices=["uniform", "block"],
                       help="2021 spelling of --recompute-granularity full --recompute-method.")
    group.add_argument("--activations-checkpoint-num-layers", type=int, default=None,
                       help="2021 spelling of --recompute-num-layers.")
    group.add_argument("--checkpoint-activations", action="store_true",
                       help="2020 spelling of --recompute-granularity full --recompute-method uniform.")
    group.add_argument("--checkpoint-num-layers", type=int, default=None,
                       help="2020 spelling of --recompute-num-layers.")
    group.add_argument("--distribute-saved-activations", "--distribute-checkpointed-activations",
                       action="store_true", dest="distribute_saved_activations",
                       help="Split recomputation checkpoints over tensor-parallel ranks (not supported).")
    group.add_argument("--train-iters", type=int, default=None, help="Iterations to train for.")
    group.add_argument("--train-samples", type=int, default=None, help="Samples to train for.")
    group.add_argument("--log-interval", type=int, default=100, help="Iterations between log lines.")
    group.add_argument("--exit-interval", type=int, default=None, help="Exit after an iteration divisible by this.")
    group.add_argument("--exit-duration-in-mins", type=float, default=None, help="Exit after this many minutes.")
    group.add_argument("--exit-signal-handler", action="store_true",
                       help="On SIGTERM: save a checkpoint at the end of the iteration and exit.")
    group.add_argument("--tensorboard-dir", default=None, help="Write TensorBoard logs here.")
    group.add_argument("--no-masked-softmax-fusion", action="store_false", dest="masked_softmax_fusion",
                       help="Use the plain PyTorch masked softmax instead of the fused one (Triton on CUDA, the "
                            "compiled reference on CPU under --torch-compile) where attention computes an explicit "
                            "softmax (--torch-compile with attention dropout); a note says when it has no effect.")
    group.add_argument("--no-persist-layer-norm", action="store_false", dest="persist_layer_norm",
                       help="Use the plain PyTorch layer norm instead of the fused one (Triton on CUDA).")
    group.add_argument("--torch-compile", action="store_true",
                       help="Compile each transformer layer with torch.compile (and the fused ops' references on "
                            "CPU); the compile time is logged once.")
    group.add_argument("--torch-compile-backend", default="inductor",
                       help="torch.compile backend for --torch-compile (inductor, aot_eager, eager, ...).")
    group.add_argument("--no-bias-gelu-fusion", action="store_false", dest="bias_gelu_fusion",
                       help="Plain GeLU(x + bias) with --openai-gelu's or the erf form, instead of the fused "
                            "tanh-approximated bias-GeLU.")
    group.add_argument("--no-bias-dropout-fusion", action="store_false", dest="bias_dropout_fusion",
                       help="Plain bias + dropout + residual instead of the fused op.")
    group.add_argument("--no-gradient-accumulation-fusion", action="store_false", dest="gradient_accumulation_fusion",
                       help="Accepted for Megatron's command lines; no effect (a one-line note says so): weight "
                            "gradients are always accumulated by autograd.")
    group.add_argument("--optimizer", default="adam", choices=["adam", "sgd"], help="Optimizer.")
    group.add_argument("--dataloader-type", default=None, choices=["single", "cyclic"],
                       help="single: one pass in order of consumed samples; cyclic: reshuffled epochs.")
    group.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes.")
    group.add_argument("--dry-run", action="store_true",
                       help="Validate the layout for --world-size, print parameters and memory per rank, exit.")
    group.add_argument("--world-size", type=int, default=None, dest="dry_run_world_size",
                       help="World size checked by --dry-run (launchers set WORLD_SIZE otherwise).")


def _add_initialization_args(parser):
    group = parser.add_argument_group(title="initialization")
    group.add_argument("--seed", type=int, default=1234, help="Seed of Python, NumPy, torch and the TP RNG tracker.")
    group.add_argument("--init-method-std", type=float, default=0.02, help="Standard deviation of weight init.")
    group.add_argument("--init-method-xavier-uniform", action="store_true",
                       help="Xavier-uniform init for every weight matrix instead of a normal distribution.")


def _add_learning_rate_args(parser):
    group = parser.add_argument_group(title="learning rate")
    group.add_argument("--lr", type=float, default=None, help="Peak learning rate.")
    group.add_argument("--lr-decay-style", default="linear",
                       choices=["constant", "linear", "cosine", "inverse-square-root"], help="Decay after warmup.")
    group.add_argument("--lr-decay-iters", type=int, default=None, help="Decay over this many iterations.")
    group.add_argument("--lr-decay-samples", type=int, default=None, help="Decay over this many samples.")
    group.add_argument("--lr-warmup-fraction", type=float, default=None,
                       help="Warm up over this fraction of the decay steps.")
    group.add_argument("--warmup", type=float, default=None, dest="warmup",
                       help="2020 spelling of --lr-warmup-fraction.")
    group.add_argument("--lr-warmup-iters", type=int, default=0, help="Warm up over this many iterations.")
    group.add_argument("--lr-warmup-samples", type=int, default=0, help="Warm up over this many samples.")
    group.add_argument("--lr-warmup-init", type=float, default=0.0, help="Learning rate at the start of warmup.")
    group.add_argument("--min-lr", type=float, default=0.0, help="Learning rate floor after decay.")
    group.add_argument("--override-lr-scheduler", "--override-opt_param-scheduler", action="store_true",
                       dest="override_opt_param_scheduler",
                       help="Take the schedule from these flags, ignoring the checkpoint's.")
    group.add_argument("--use-checkpoint-lr-scheduler", "--use-checkpoint-opt_param-scheduler", action="store_true",
                       dest="use_checkpoint_opt_param_scheduler",
                       help="Take the schedule from the checkpoint, ignoring these flags.")


def _add_checkpointing_args(parser):
    group = parser.add_argument_group(title="checkpointing")
    group.add_argument("--save", default=None, help="Directory to save checkpoints to.")
    group.add_argument("--save-interval", type=int, default=None, help="Iterations between checkpoints.")
    group.add_argument("--no-save-optim", action="store_true", default=None, help="Save without optimizer state.")
    group.add_argument("--no-save-rng", action="store_true", default=None, help="Save without RNG state.")
    group.add_argument("--load", default=None, help="Directory to load a checkpoint from.")
    group.add_argument("--no-load-optim", action="store_true", default=None, help="Load without optimizer state.")
    group.add_argument("--no-load-rng", action="store_true", default=None, help="Load without RNG state.")
    group.add_argument("--finetune", action="store_true",
                       help="Load model weights only and start from iteration 0 (no optimizer or RNG state).")


def _add_mixed_precision_args(parser):
    group = parser.add_argument_group(title="mixed precision")
    group.add_argument("--fp16", action="store_true", help="fp16 weights and activations, fp32 master weights.")
    group.add_argument("--bf16", action="store_true", help="bf16 weights and activations, fp32 master weights.")
    group.add_argument("--loss-scale", type=float, default=None, help="Static loss scale (fp16); dynamic when unset.")
    group.add_argument("--initial-loss-scale", type=float, default=2 ** 32, help="Initial dynamic loss scale.")
    group.add_argument("--min-loss-scale", type=float, default=1.0, help="Smallest dynamic loss scale.")
    group.add_argument("--loss-scale-window", type=float, default=1000,
                       help="Iterations without overflow before the dynamic scale doubles.")
    group.add_argument("--hysteresis", type=int, default=2, help="Overflows tolerated before the scale halves.")
    group.add_argument("--fp32-residual-connection", action="store_true",
                       help="Keep the residual stream in fp32 (with --fp16/--bf16).")
    group.add_argument("--apply-query-key-layer-scaling", action="store_true", default=None,
                       dest="apply_query_key_layer_scaling",
                       help="Scale attention scores by 1/layer-number before the fp32 softmax (the default here).")
    group.add_argument("--no-query-key-layer-scaling", action="store_false", dest="apply_query_key_layer_scaling",
                       help="Do not scale attention scores by the layer number.")
    group.add_argument("--attention-softmax-in-fp32", action="store_true",
                       help="Run the attention softmax in fp32 under --fp16/--bf16.")
    group.add_argument("--accumulate-allreduce-grads-in-fp32", action="store_true",
                       help="Accumulate and all-reduce gradients in fp32 (forced on by --bf16).")
    group.add_argument("--fp16-lm-cross-entropy", action="store_true",
                       help="Compute the LM cross entropy on fp16 logits instead of fp32.")


def _add_distributed_args(parser):
    group = parser.add_argument_group(title="distributed")
    group.add_argument("--tensor-model-parallel-size", type=int, default=None, help="Tensor-parallel size (1).")
    group.add_argument("--model-parallel-size", type=int, default=None, dest="model_parallel_size",
                       help="2020 spelling of --tensor-model-parallel-size.")
    group.add_argument("--pipeline-model-parallel-size", type=int, default=1, help="Pipeline-parallel size.")
    group.add_argument("--pipeline-model-parallel-split-rank", type=int, default=None,
                       help="First pipeline stage of the decoder (encoder-decoder models).")
    group.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None,
                       help="Layers per model chunk of the interleaved pipeline schedule.")
    group.add_argument("--distributed-backend", default=None, choices=["nccl", "gloo"],
                       help="torch.distributed backend; nccl with GPUs, gloo without when not given.")
    group.add_argument("--distributed-timeout-minutes", type=float, default=1.0,
                       help="A collective that waits longer than this ends the job with an error naming it.")
    group.add_argument("--DDP-impl", default="local", choices=["local", "torch"],
                       help="local: contiguous bucketed gradient buffers; torch: torch.nn.parallel.DDP.")
    group.add_argument("--use-distributed-optimizer", action="store_true",
                       help="Shard optimizer state and fp32 master weights over data-parallel ranks.")
    group.add_argument("--sequence-parallel", action="store_true",
                       help="Split LayerNorm/dropout activations along the sequence over tensor-parallel ranks.")
    group.add_argument("--local_rank", "--local-rank", type=int, default=None, dest="local_rank",
                       help="Set by python -m torch.distributed.launch.")
    group.add_argument("--use-cpu-initialization", action="store_true", default=None, dest="use_cpu_initialization",
                       help="Draw each partitioned weight in full and slice it, so every layout starts from the "
                            "same weights (the default here).")
    group.add_argument("--no-use-cpu-initialization", action="store_false", dest="use_cpu_initialization",
                       help="Draw each rank's shard from its tensor-parallel RNG stream (cheaper; layout-dependent).")


def _add_validation_args(parser):
    group = parser.add_argument_group(title="validation")
    group.add_argument("--eval-iters", type=int, default=100, help="Iterations per evaluation.")
    group.add_argument("--eval-interval", type=int, default=1000, help="Iterations between evaluations.")


class _JoinedSplit(argparse.Action):
    """``--split 969, 30, 1`` written unquoted (three shell words, as Megatron prints its default) is
    the same string as ``--split '969, 30, 1'``."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, " ".join(values))


def _add_data_args(parser):
    group = parser.add_argument_group(title="data and dataloader")
    group.add_argument("--data-path", nargs="*", default=None,
                       help="Dataset prefix, or weight prefix weight prefix ... for a blend.")
    group.add_argument("--train-data-path", nargs="*", default=None,
                       help="Training dataset(s), instead of splitting --data-path.")
    group.add_argument("--valid-data-path", nargs="*", default=None, help="Validation dataset(s).")
    group.add_argument("--test-data-path", nargs="*", default=None, help="Test dataset(s).")
    group.add_argument("--split", default="969, 30, 1", nargs="+", action=_JoinedSplit,
                       help="Train, valid, test weights, e.g. '949,50,1' (also unquoted with spaces: 969, 30, 1).")
    group.add_argument("--vocab-file", default=None, help="Vocabulary file.")
    group.add_argument("--merge-file", default=None, help="BPE merge file.")
    group.add_argument("--vocab-extra-ids", type=int, default=0, help="Sentinel tokens to add (T5: 100).")
    group.add_argument("--tokenizer-type", default=None, choices=list(TOKENIZER_TYPES), help="Tokenizer.")
    group.add_argument("--tokenizer-model", default=None, help="SentencePiece model or HF tokenizer.json.")
    group.add_argument("--seq-length", type=int, default=None, help="Sequence length.")
    group.add_argument("--encoder-seq-length", type=int, default=None, help="Encoder sequence length.")
    group.add_argument("--decoder-seq-length", type=int, default=None, help="Decoder sequence length (T5).")
    group.add_argument("--mask-prob", type=float, default=0.15, help="Probability of masking a token (BERT/T5).")
    group.add_argument("--short-seq-prob", type=float, default=0.1, help="Probability of a shorter sample (BERT/T5).")
    group.add_argument("--data-impl", "--dataset-impl", default="infer", dest="data_impl",
                       choices=["lazy", "cached", "mmap", "infer", "tfrecord"],
                       help="Indexed dataset reader; tfrecord: MLPerf BERT TFRecords (pretrain_bert.py), "
                            "--data-path globs of training files, --valid-data-path the eval file(s).")
    group.add_argument("--tfrecord-index-dir", default=None,
                       help="DALI index files of the TFRecords (<dir>/[train/|eval/]<name>.idx, as "
                            "tools/make_idx.py writes them); missing ones are built and saved there.")
    group.add_argument("--tfrecord-shuffle-buffer", type=int, default=10000,
                       help="Records in the seeded shuffle buffer of each rank's training stream "
                            "(DALI's initial_fill); 1 reads in file order.")
    group.add_argument("--data-cache-path", default=None, help="Directory for dataset index caches.")
    group.add_argument("--reset-position-ids", action="store_true", help="Restart position ids after each EOD.")
    group.add_argument("--reset-attention-mask", action="store_true", help="Block attention across EOD tokens.")
    group.add_argument("--eod-mask-loss", action="store_true", help="No loss on EOD tokens.")
    group.add_argument("--need-pad-id", "--need_pad_id", dest="need_pad_id", action="store_true",
                       help="Append a <pad> token to a tokenizer without one (as tools/preprocess_data.py "
                            "--need-pad-id did for retmmap data), so the vocabulary has its row.")


def _add_logging_args(parser):
    group = parser.add_argument_group(title="logging")
    group.add_argument("--log-params-norm", action="store_true", help="Log the norm of the parameters.")
    group.add_argument("--log-num-zeros-in-grad", action="store_true", help="Log the number of zero gradients.")
    group.add_argument("--peak-flops-per-gpu", type=float, default=None,
                       help="Peak dense FLOP/s of one accelerator (e.g. 989e12 for an H100 in bf16): enables the "
                            "MFU column of the iteration lines.")
    group.add_argument("--timing-log-level", type=int, default=0, choices=[0, 1, 2],
                       help="0: iteration time only; 1: + forward/backward/optimizer; 2: + communication.")
    group.add_argument("--tensorboard-log-interval", type=int, default=1, help="Iterations between TensorBoard writes.")
    group.add_argument("--tensorboard-queue-size", type=int, default=1000, help="TensorBoard events queued in memory.")
    group.add_argument("--log-json", default=None, metavar="FILE",
                       help="Append one JSON object per logged iteration and per evaluation to FILE (the numbers "
                            "of the log lines, unrounded), for scripts and tests to read.")
    group.add_argument("--log-timers-to-tensorboard", action="store_true", help="Write timers to TensorBoard.")
    group.add_argument("--log-batch-size-to-tensorboard", action="store_true", help="Write the batch size.")
    group.add_argument("--no-log-learnig-rate-to-tensorboard", "--no-log-learning-rate-to-tensorboard",
                       action="store_false", dest="log_learning_rate_to_tensorboard",
                       help="Do not write the learning rate.")
    group.add_argument("--no-log-loss-scale-to-tensorboard", action="store_false",
                       dest="log_loss_scale_to_tensorboard", help="Do not write the loss scale.")
    group.add_argument("--log-validation-ppl-to-tensorboard", action="store_true",
                       help="Write validation perplexity.")


def add_biencoder_args(parser):
    """The retriever flags, added only by the scripts that use them (pretrain_ict.py,
    tools/create_doc_index.py, tools/eval_ict_heldout.py, tasks/main.py): elsewhere they would be
    accepted and ignored."""
    group = parser.add_argument_group(title="biencoder (ICT retriever, block index, retrieval evaluation)")
    group.add_argument("--ict-head-size", type=int, default=None,
                       help="2020 spelling of --biencoder-projection-dim (ORQA: 128).")
    group.add_argument("--biencoder-projection-dim", type=int, default=None,
                       help="Project each tower's [CLS] state to this size; 0: no projection.")
    group.add_argument("--biencoder-shared-query-context-model", action="store_true",
                       help="One tower shared by queries and contexts.")
    group.add_argument("--bert-load", default=None,
                       help="Start both biencoder towers from this BERT checkpoint (a pretrain_bert.py output).")
    group.add_argument("--ict-load", default=None, help="Biencoder (ICT) checkpoint to index or evaluate with.")
    group.add_argument("--titles-data-path", default=None,
                       help="Titles dataset prefix (one title per document of --data-path).")
    group.add_argument("--query-in-block-prob", type=float, default=0.1,
                       help="Probability that the ICT pseudo-query stays in its block.")
    group.add_argument("--use-one-sent-docs", action="store_true",
                       help="Allow one-sentence documents (and blocks) in ICT data.")
    group.add_argument("--retriever-score-scaling", action="store_true",
                       help="Divide query-context scores by sqrt(hidden size).")
    group.add_argument("--retriever-report-topk-accuracies", nargs="+", type=int, default=[1, 5],
                       help="In-batch (training) or corpus (evaluation) top-k accuracies to report.")
    group.add_argument("--retriever-seq-length", type=int, default=256,
                       help="Sequence length of evidence passages and questions (retrieval evaluation).")
    group.add_argument("--block-data-path", "--embedding-path", dest="block_data_path", default=None,
                       help="Block embedding store: a .pkl (Megatron's pickle) or a directory (memory-mapped).")
    group.add_argument("--indexer-batch-size", type=int, default=128, help="Blocks per batch when indexing.")
    group.add_argument("--indexer-log-interval", type=int, default=1000,
                       help="Batches between indexing progress lines.")
    group.add_argument("--evidence-data-path", default=None,
                       help="Evidence passages: a DPR-style TSV (id, text, title).")
    group.add_argument("--qa-data-dev", default=None, help="Questions with answers (NQ-open CSV/TSV), dev set.")
    group.add_argument("--qa-data-test", default=None, help="Questions with answers (NQ-open CSV/TSV), test set.")
    group.add_argument("--faiss-use-gpu", action="store_true", help="Search on the GPU (needs faiss-gpu).")
    group.add_argument("--faiss-match", default="string", choices=["string", "regex"],
                       help="Answer matching: token sub-sequence (string) or case-insensitive regex.")
    group.add_argument("--faiss-topk-retrievals", type=int, default=100, help="Blocks retrieved per question.")
    group.add_argument("--faiss-index-factory", default="Flat",
                       help="FAISS index: Flat (exact), or approximate e.g. IVF1024,Flat or HNSW32.")
    group.add_argument("--faiss-nprobe", type=int, default=16, help="IVF lists searched per query.")
    return parser


def add_retro_args(parser):
    """RETRO's flags (NeMo's model options under Megatron spellings), added only by pretrain_retro.py
    and tools/generate_samples_retro.py."""
    group = parser.add_argument_group(title="RETRO")
    group.add_argument("--retro-chunk-size", type=int, default=64, help="Tokens per chunk (NeMo: 64).")
    group.add_argument("--retro-num-neighbors", type=int, default=2,
                       help="Neighbours per chunk fed to the model (at most the KNN map's K).")
    group.add_argument("--retro-encoder-layers", type=int, default=2, help="Layers of the retrieval encoder.")
    group.add_argument("--retro-encoder-cca-layers", type=int, nargs="*", default=[0],
                       help="0-based encoder layers that cross-attend to the decoder chunk (default: 0).")
    group.add_argument("--retro-decoder-cca-layers", type=int, nargs="+", default=None,
                       help="0-based decoder layers with chunked cross-attention. Default: NeMo's [3, 5] for "
                            "6 layers, else Megatron-LM's every third from the 6th (5, 8, 11, ...).")
    group.add_argument("--retro-train-data", default=None,
                       help="retmmap training data prefix (tools/preprocess_data.py --dataset-impl retmmap); "
                            "--split divides its documents into train/valid/test.")
    group.add_argument("--retro-db", default=None,
                       help="retmmap retrieval database prefix (built with --retrieval-db).")
    group.add_argument("--retro-knn-map", default=None,
                       help="KNN map of the training chunks into the database (tools/retro/build_knn_map.py).")
    return parser


def biencoder_arg_names() -> set:
    """Destinations of the retriever flags, to refuse them where a task does not use them."""
    parser = argparse.ArgumentParser(add_help=False)
    add_biencoder_args(parser)
    return {action.dest for action in parser._actions}


GROUP_BUILDERS = (
    _add_network_size_args,
    _add_regularization_args,
    _add_training_args,
    _add_initialization_args,
    _add_learning_rate_args,
    _add_checkpointing_args,
    _add_mixed_precision_args,
    _add_distributed_args,
    _add_validation_args,
    _add_data_args,
    _add_logging_args,
)


def build_parser(extra_args_provider=None) -> argparse.ArgumentParser:
    # allow_abbrev=False: a prefix of a flag must never silently select another flag.
    parser = argparse.ArgumentParser(description="Megatron-LM Arguments", allow_abbrev=False)
    for add_group in GROUP_BUILDERS:
        add_group(parser)
    if extra_args_provider is not None:
        parser = extra_args_provider(parser)
    return parser
