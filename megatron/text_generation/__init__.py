"""Text generation for GPT: sampling, KV-cached or recomputed decoding, and a generation API."""
from megatron.text_generation.generation import KVCache, generate, generate_tokens, kv_cache
from megatron.text_generation.sampling import SamplingParams, sample

__all__ = ["KVCache", "SamplingParams", "generate", "generate_tokens", "kv_cache", "sample"]
