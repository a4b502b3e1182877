"""GPT training throughput and MFU: this framework's training step against Hugging Face GPT-2.

    python benchmarks/bench_gpt_mfu.py                       # GPU: GPT-345M and GPT-1.3B, bf16
    python benchmarks/bench_gpt_mfu.py --models 345m --micro-batch-size 4 --recompute selective --compile
    python benchmarks/bench_gpt_mfu.py --tiny                # smoke configuration (default without CUDA)

Our side is the real training step: GPTModel under Float16Module (bf16), the pipeline schedule's
forward/backward (vocab-parallel cross entropy in the model), and MegatronOptimizer.step (fp32
master weights, fused AdamW on CUDA, clipping by the global norm), on synthetic tokens. The
baseline, in the same run and at the same sizes, is ``transformers.GPT2LMHeadModel`` trained the
plain way: SDPA attention, bf16 autocast, ``torch.optim.AdamW(fused=True)``, clipping.

Reported per model: ms per iteration (median of the timed iterations), tokens/s, TFLOP/s, MFU,
peak memory. FLOPs are Megatron's formula (``megatron.utils.num_floating_point_operations``:
Narayanan et al. 2021, eq. 3 -- 24 B s h^2 (1 + s/6h) per layer and 6 B s h V for the logits,
x4/3 of the layers with full recompute), the same count for both sides, so the ratio of TFLOP/s is
the ratio of speeds. MFU divides by the device's dense bf16 peak (table below, or --peak-tflops).
"""
import argparse
import contextlib
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.utils import num_floating_point_operations  # noqa: E402

# Dense (no sparsity) bf16 peak TFLOP/s of the SXM/PCIe parts as published by NVIDIA.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0,
                    "A6000": 155.0, "V100": 125.0}

MODELS = {
    "345m": dict(num_layers=24, hidden_size=1024, num_attention_heads=16, seq_length=1024),
    "1.3b": dict(num_layers=24, hidden_size=2048, num_attention_heads=16, seq_length=2048),
    "tiny": dict(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=64, vocab=1024),
}
VOCAB = 50304  # GPT-2's 50257 padded to a multiple of 128, as Megatron does (the tiny model: 1024)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=None,
                        help="Comma-separated of 345m, 1.3b (default on CUDA: both; without CUDA: tiny).")
    parser.add_argument("--tiny", action="store_true", help="The smoke configuration (2 layers, hidden 64).")
    parser.add_argument("--micro-batch-size", type=int, default=None, help="Default 8 on CUDA, 2 otherwise.")
    parser.add_argument("--recompute", choices=["none", "selective", "full"], default="none")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer layers.")
    parser.add_argument("--no-kernels", action="store_true",
                        help="Turn the fused kernels off (the --no-*-fusion / --no-persist-layer-norm flags).")
    parser.add_argument("--iters", type=int, default=None, help="Timed iterations (default 10 on CUDA, 3 otherwise).")
    parser.add_argument("--warmup", type=int, default=None, help="Untimed iterations first (default 3, 1).")
    parser.add_argument("--peak-tflops", type=float, default=None, help="Device peak for the MFU (dense bf16).")
    parser.add_argument("--no-baseline", action="store_true", help="Skip the Hugging Face GPT-2 baseline.")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.tiny or not cuda:
        if args.models not in (None, "tiny"):
            parser.error(f"--models {args.models} needs CUDA; without it only the tiny configuration runs")
        args.models = "tiny"
    args.models = (args.models or "345m,1.3b").split(",")
    for name in args.models:
        if name not in MODELS:
            parser.error(f"--models: unknown model {name!r}; choose from {', '.join(MODELS)}")
    args.micro_batch_size = args.micro_batch_size or (8 if cuda else 2)
    args.iters = args.iters or (10 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    if args.micro_batch_size < 1 or args.iters < 1 or args.warmup < 0:
        parser.error("--micro-batch-size and --iters must be >= 1, --warmup >= 0")
    return args


def device_peak_tflops(device: torch.device, override):
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, whole process


def reset_peak_memory(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, device, warmup, iters):
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ours(size, args, device, pg):
    from megatron.core.distributed import Float16Module
    from megatron.core.fusions import set_cpu_fusion_mode
    from megatron.core.models import GPTModel
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.transformer import TransformerConfig
    from megatron.model_setup import compile_transformer_layers

    fused = not args.no_kernels
    recompute = {} if args.recompute == "none" else {"recompute_granularity": args.recompute}
    if args.recompute == "full":
        recompute.update(recompute_method="uniform", recompute_num_layers=1)
    config = TransformerConfig(num_layers=size["num_layers"], hidden_size=size["hidden_size"],
                               num_attention_heads=size["num_attention_heads"], hidden_dropout=0.0,
                               attention_dropout=0.0, params_dtype=torch.bfloat16, bias_gelu_fusion=fused,
                               bias_dropout_fusion=fused, masked_softmax_fusion=fused, persist_layer_norm=fused,
                               **recompute)
    seq, mbs = size["seq_length"], args.micro_batch_size
    vocab = size.get("vocab", VOCAB)
    model = GPTModel(config, vocab_size=vocab, max_sequence_length=seq, pg=pg).to(device)
    if args.compile:
        set_cpu_fusion_mode("compiled")
        compile_transformer_layers(model)
    model = Float16Module(torch.bfloat16, model)
    optimizer = get_megatron_optimizer(OptimizerConfig(lr=1e-4, bf16=True, clip_grad=1.0, params_dtype=torch.bfloat16),
                                       [model], pg)
    forward_backward = get_forward_backward_func(pg)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (mbs, seq + 1), generator=gen).to(device)
    position_ids = torch.arange(seq, device=device)[None].expand(mbs, seq)

    def forward_step(data_iterator, chunk):
        per_token = chunk(tokens[:, :-1], position_ids, None, labels=tokens[:, 1:])
        return per_token, lambda output: (output.float().mean(), {})

    def step():
        optimizer.zero_grad()
        forward_backward(forward_step_func=forward_step, data_iterator=None, model=model, num_microbatches=1,
                         seq_length=seq, micro_batch_size=mbs, config=config, pg=pg)
        optimizer.step(sync=False)

    reset_peak_memory(device)
    seconds = timed(step, device, args.warmup, args.iters)
    return seconds, peak_memory_gib(device)


def huggingface(size, args, device):
    from transformers import GPT2Config, GPT2LMHeadModel

    seq, mbs = size["seq_length"], args.micro_batch_size
    vocab = size.get("vocab", VOCAB)
    config = GPT2Config(vocab_size=vocab, n_positions=seq, n_embd=size["hidden_size"], n_layer=size["num_layers"],
                        n_head=size["num_attention_heads"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    config._attn_implementation = "sdpa"
    model = GPT2LMHeadModel(config).to(device)
    if args.recompute != "none":
        model.gradient_checkpointing_enable()
    if args.compile:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (mbs, seq), generator=gen).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    reset_peak_memory(device)
    seconds = timed(step, device, args.warmup, args.iters)
    return seconds, peak_memory_gib(device)


def init_single_process(device):
    import torch.distributed as dist

    from megatron.core import parallel_state

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29581")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    return parallel_state.initialize_model_parallel(1, 1)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    pg = init_single_process(device)
    peak = device_peak_tflops(device, args.peak_tflops)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {device_name}; peak bf16 {peak or 'unknown'} TFLOP/s; micro-batch {args.micro_batch_size}; "
          f"recompute {args.recompute}; compile {args.compile}; kernels {'off' if args.no_kernels else 'on'}; "
          f"{args.warmup} warm-up + {args.iters} timed iterations")
    header = f"{'model':8} {'impl':12} {'ms/iter':>10} {'tokens/s':>11} {'TFLOP/s':>9} {'MFU':>7} {'peak GiB':>9}"
    print(header)
    print("-" * len(header))
    rows = []
    for name in args.models:
        size = MODELS[name]
        tokens = args.micro_batch_size * size["seq_length"]
        flops = num_floating_point_operations(args.micro_batch_size, size["seq_length"], size["num_layers"],
                                              size["hidden_size"], size.get("vocab", VOCAB), args.recompute == "full")
        runs = [("megatron", lambda: ours(size, args, device, pg))]
        if not args.no_baseline:
            runs.append(("hf-gpt2", lambda: huggingface(size, args, device)))
        results = {}
        for impl, run in runs:
            seconds, memory = run()
            tflops = flops / seconds / 1e12
            mfu = f"{100 * tflops / peak:6.2f}%" if peak else "    n/a"
            results[impl] = seconds
            print(f"{name:8} {impl:12} {seconds * 1e3:10.1f} {tokens / seconds:11.0f} {tflops:9.4f} {mfu:>7} "
                  f"{memory:9.2f}", flush=True)
            rows.append((name, impl, seconds))
        if "hf-gpt2" in results:
            print(f"{name:8} {'speed-up':12} {results['hf-gpt2'] / results['megatron']:10.2f}x (megatron over hf-gpt2)")
    return rows


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
