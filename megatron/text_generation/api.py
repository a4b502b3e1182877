"""Validation of text generation requests (the HTTP server's JSON body), free of any HTTP code.

A request is ``{"prompts": [str, ...], "tokens_to_generate": int, "temperature": float,
"top_k": int, "top_p": float, "greedy": bool, "random_seed": int}``; only ``prompts`` is
required. Every problem raises ``RequestError`` with a one-line message naming the field.
"""
import math
from dataclasses import dataclass
from typing import List, Optional

from megatron.text_generation.sampling import SamplingParams


class RequestError(ValueError):
    """A request the server answers with 400 Bad Request."""


@dataclass(frozen=True)
class RequestLimits:
    max_prompts: int = 16
    max_prompt_chars: int = 8192
    max_tokens_to_generate: int = 1024


@dataclass(frozen=True)
class GenerationRequest:
    prompts: List[str]
    tokens_to_generate: int
    params: SamplingParams
    random_seed: Optional[int]


FIELDS = ("prompts", "tokens_to_generate", "temperature", "top_k", "top_p", "greedy", "random_seed")


def _integer(body: dict, name: str, default, low: int, high: Optional[int] = None):
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        raise RequestError(f"{name} must lie in [{low}, {high if high is not None else 'inf'}], got {value}")
    return value


def _number(body: dict, name: str, default: float) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):  # Python's JSON parser accepts NaN, Infinity and -Infinity
        raise RequestError(f"{name} must be a finite number, got {value}")
    return float(value)


def parse_request(body, limits: RequestLimits, defaults: SamplingParams, default_tokens: int) -> GenerationRequest:
    """Check a decoded JSON body against ``limits``; absent sampling fields take the server's defaults."""
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r}; accepted fields: {', '.join(FIELDS)}")
    if "prompts" not in body:
        raise RequestError("prompts is required: a list of strings")
    prompts = body["prompts"]
    if not isinstance(prompts, list) or not prompts:
        raise RequestError("prompts must be a non-empty list of strings")
    if len(prompts) > limits.max_prompts:
        raise RequestError(f"prompts has {len(prompts)} entries; at most {limits.max_prompts} are allowed")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise RequestError(f"prompts[{index}] must be a string, got {type(prompt).__name__}")
        if not prompt:
            raise RequestError(f"prompts[{index}] is empty")
        if len(prompt) > limits.max_prompt_chars:
            raise RequestError(f"prompts[{index}] has {len(prompt)} characters; at most {limits.max_prompt_chars} are allowed")
    tokens = _integer(body, "tokens_to_generate", min(default_tokens, limits.max_tokens_to_generate), 0,
                      limits.max_tokens_to_generate)
    greedy = body.get("greedy", defaults.greedy)
    if not isinstance(greedy, bool):
        raise RequestError(f"greedy must be true or false, got {type(greedy).__name__}")
    try:
        params = SamplingParams(temperature=_number(body, "temperature", defaults.temperature),
                                top_k=_integer(body, "top_k", defaults.top_k, 0),
                                top_p=_number(body, "top_p", defaults.top_p), greedy=greedy)
    except ValueError as error:
        if isinstance(error, RequestError):
            raise
        raise RequestError(str(error)) from None
    seed = _integer(body, "random_seed", None, 0, 2**63 - 1)
    return GenerationRequest(prompts, tokens, params, seed)
