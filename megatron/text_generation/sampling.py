"""Choose the next token from logits: greedy, or temperature then top-k / top-p (nucleus) filtering."""
import math
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. ``top_k`` 0 and ``top_p`` 0.0 mean no filtering."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    greedy: bool = False

    def __post_init__(self):
        if (isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float))
                or not 0 < self.temperature < math.inf):
            # An infinite temperature would turn every logit into 0 (uniform noise over the vocabulary).
            raise ValueError(f"temperature must be a number > 0 (and finite), got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be a number in [0, 1], got {self.top_p!r}")


def sample(logits: torch.Tensor, params: SamplingParams, vocab_size: Optional[int] = None,
           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Next token ids ``[b]`` from logits ``[b, v]``.

    ``vocab_size`` hides the padding rows of the embedding (``v`` is rounded up for tensor
    parallelism) so they are never produced.
    """
    logits = logits.float()
    if vocab_size is not None and vocab_size < logits.shape[-1]:
        logits = logits.clone()
        logits[:, vocab_size:] = float("-inf")
    if params.greedy or params.top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits / params.temperature
    if params.top_k > 0:
        k = min(params.top_k, logits.shape[-1])
        kth_best = torch.topk(logits, k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if 0.0 < params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token once the tokens before it already cover top_p; the best token always stays.
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
