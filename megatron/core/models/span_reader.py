"""Open-domain QA (ORQA; Lee et al., 2019; REALM fine-tuning): a fine-tuned query tower retrieves
blocks whose embeddings stay frozen, and a BERT reader scores answer spans in each block.

For a question x, retrieved blocks z_1..z_k (frozen embeddings e_z) and spans s of z:

    log p(z | x)    = log_softmax_z( Embed_query(x) . e_z )                 (over the k blocks)
    log p(s | z, x) = log_softmax_s( start(s_first) + end(s_last) )         (over the valid spans of z)
    loss            = - logsumexp_{z, s gold} ( log p(z|x) + log p(s|z,x) ) (mean over answerable x)

A span is valid when it lies inside the block part of the reader's joint input
``[CLS] question [SEP] title [SEP] body [SEP]`` and is at most ``max_span_width`` tokens long;
it is gold when its tokens equal the tokens of one of the question's answers. Questions with no
gold span in any retrieved block contribute nothing (they have no likelihood to maximise).
The prediction is the span of highest joint score ``log p(z|x) + log p(s|z,x)``.

Spans are held on a ``[rows, L, W]`` grid: start position ``i``, width ``w`` (last token ``i + w``).

State-dict names: ``retriever.`` (a query-only ``BiEncoderModel``: ``query_model`` or
``shared_model``) and ``reader.`` (``language_model`` as in BERT, plus ``span_head``).
"""
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from megatron.core.models.bert import bert_extended_attention_mask
from megatron.core.models.biencoder import BiEncoderModel
from megatron.core.models.language_model import TransformerLanguageModel, replicated_linear
from megatron.core.models.realm import build_joint_inputs
from megatron.core.parallel_state import ProcessGroups, get_process_groups
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region, init_rng_scope
from megatron.core.transformer import AttnMaskType, TransformerConfig

# Score of an invalid span: finite (so a block without any valid span gives no NaN), far below any real score.
INVALID_SCORE = -1e30


def _shifted(values: torch.Tensor, max_span_width: int, fill) -> torch.Tensor:
    """``out[n, i, w] = values[n, i + w]`` (``fill`` past the end): ``[n, L] -> [n, L, W]``."""
    n, length = values.shape
    padded = torch.cat([values, values.new_full((n, max_span_width), fill)], dim=1)  # [n, L + W]
    return padded.unfold(1, max_span_width, 1)[:, :length, :]


def valid_spans(in_block: torch.Tensor, max_span_width: int) -> torch.Tensor:
    """Bool ``[n, L, W]``: the span starting at ``i`` of width ``w`` lies inside the block part
    (which is contiguous, so both ends inside means the whole span is)."""
    if max_span_width < 1:
        raise ValueError(f"max_span_width must be positive, got {max_span_width}")
    in_block = in_block.bool()
    return in_block.unsqueeze(2) & _shifted(in_block, max_span_width, False)


def span_log_probs(start_logits: torch.Tensor, end_logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``log p(s | z, x)`` ``[n, L, W]``: softmax over the valid spans of each row; invalid spans get
    ``INVALID_SCORE``-sized values (probability 0, no NaN even for a row without valid spans)."""
    width = valid.shape[2]
    scores = start_logits.float().unsqueeze(2) + _shifted(end_logits.float(), width, 0.0)  # [n, L, W]
    scores = scores.masked_fill(~valid, INVALID_SCORE)
    flat = scores.flatten(1)
    return (flat - torch.logsumexp(flat, dim=1, keepdim=True)).view_as(scores)


def gold_spans(tokens: np.ndarray, in_block: np.ndarray, answers: Sequence[Sequence[Sequence[int]]],
               max_span_width: int) -> np.ndarray:
    """Bool ``[n, L, W]``: spans of the block part whose token ids equal an answer's.

    ``tokens``/``in_block`` ``[n, L]``; ``answers[r]`` the answers of row ``r`` as token-id lists
    (answers longer than ``max_span_width`` tokens cannot be spans and are skipped)."""
    n, length = tokens.shape
    gold = np.zeros((n, length, max_span_width), dtype=bool)
    for row in range(n):
        inside = np.flatnonzero(in_block[row])
        if inside.size == 0:
            continue
        first, last = int(inside[0]), int(inside[-1])  # the block part is contiguous
        block = tokens[row, first:last + 1]
        for answer in answers[row]:
            width = len(answer)
            if width == 0 or width > max_span_width or width > block.size:
                continue
            windows = np.lib.stride_tricks.sliding_window_view(block, width)
            for start in np.flatnonzero((windows == np.asarray(answer)).all(axis=1)):
                gold[row, first + int(start), width - 1] = True
    return gold


def marginal_span_loss(log_p_z: torch.Tensor, log_p_span: torch.Tensor,
                       gold: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(loss, number of answerable questions).

    ``log_p_z [b, k]``, ``log_p_span [b, k, L, W]``, ``gold [b, k, L, W]`` bool. The loss is the
    negative log of the probability mass on gold spans, marginalised over blocks and spans, averaged
    over the questions that have a gold span in some block (0 when none has)."""
    joint = log_p_z.float()[:, :, None, None] + log_p_span.float()
    per_question = torch.logsumexp(joint.masked_fill(~gold, INVALID_SCORE).flatten(1), dim=1)  # [b]
    answerable = gold.flatten(1).any(dim=1)
    count = answerable.sum()
    loss = -torch.where(answerable, per_question, torch.zeros_like(per_question)).sum() / count.clamp(min=1)
    return loss, count


def best_spans(log_p_z: torch.Tensor, log_p_span: torch.Tensor) -> List[Tuple[int, int, int]]:
    """Per question the ``(block slot, first token, last token)`` of highest ``log p(z|x) + log p(s|z,x)``."""
    b, k, length, width = log_p_span.shape
    joint = (log_p_z.float()[:, :, None, None] + log_p_span.float()).flatten(1)
    best = joint.argmax(dim=1).tolist()
    out = []
    for flat in best:
        slot, rest = divmod(flat, length * width)
        start, w = divmod(rest, width)
        out.append((slot, start, start + w))
    return out


class SpanReader(nn.Module):
    """A BERT encoder (``language_model``, no pooler) with a start/end head (``span_head``) on every position."""

    def __init__(self, config: TransformerConfig, vocab_size: int, max_sequence_length: int,
                 pg: Optional[ProcessGroups] = None):
        super().__init__()
        self.pg = pg if pg is not None else get_process_groups()
        self.config = config
        self.language_model = TransformerLanguageModel(
            config, vocab_size, max_sequence_length, AttnMaskType.padding, num_tokentypes=2, add_pooler=False,
            pre_process=True, post_process=True, pg=self.pg)
        with init_rng_scope(config.init_seed, "span_head"):
            self.span_head = replicated_linear(config.hidden_size, 2, config)

    def forward(self, tokens: torch.Tensor, pad_mask: torch.Tensor,
                token_types: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(start logits, end logits), each float ``[n, L]``."""
        hidden = self.language_model(tokens, None, bert_extended_attention_mask(pad_mask),
                                     tokentype_ids=token_types)  # [L(/tp), n, h]
        if self.config.sequence_parallel and self.pg.tensor_model_parallel_size > 1:
            hidden = gather_from_sequence_parallel_region(hidden, self.pg.tp, tensor_parallel_output_grad=False)
        logits = self.span_head(hidden).float()  # [L, n, 2]
        return logits[..., 0].t(), logits[..., 1].t()


class ORQAModel(nn.Module):
    """The fine-tuned query tower (``retriever``) and the span reader (``reader``), one pipeline stage.
    The evidence tower is not built: block embeddings come frozen from the index."""

    def __init__(self, config: TransformerConfig, vocab_size: int, max_sequence_length: int,
                 projection_dim: int = 0, shared_query_context_model: bool = False, pad_id: int = 0,
                 max_span_width: int = 10, pg: Optional[ProcessGroups] = None):
        super().__init__()
        self.pg = pg if pg is not None else get_process_groups()
        if self.pg.pipeline_model_parallel_size != 1:
            raise ValueError(f"ORQAModel runs on one pipeline stage; got pipeline_model_parallel_size "
                             f"{self.pg.pipeline_model_parallel_size}")
        if max_span_width < 1:
            raise ValueError(f"max_span_width must be positive, got {max_span_width}")
        self.pad_id, self.max_span_width = pad_id, max_span_width
        self.max_sequence_length = max_sequence_length
        self.retriever = BiEncoderModel(config, vocab_size, max_sequence_length, num_tokentypes=2,
                                        projection_dim=projection_dim,
                                        shared_query_context_model=shared_query_context_model, pg=self.pg,
                                        only_query_model=True)
        self.reader = SpanReader(config, vocab_size, max_sequence_length, self.pg)

    def set_input_tensor(self, input_tensor) -> None:
        received = input_tensor if isinstance(input_tensor, (list, tuple)) else [input_tensor]
        if any(t is not None for t in received):
            raise ValueError("ORQAModel runs on one pipeline stage and cannot take received activations")

    def embed_questions(self, tokens: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        query_tower, _ = self.retriever.towers()
        return query_tower(tokens, pad_mask, torch.zeros_like(tokens))  # [b, d]

    def forward(self, question_tokens: torch.Tensor, question_pad_mask: torch.Tensor, retrieve: Callable):
        """``(log p(z|x) [b, k], log p(s|z,x) [b, k, L, W], joint tokens [b, k, L], in-block mask [b, k, L],
        retrieved ids [b, k])``.

        ``retrieve(question embeddings [b, d], detached) -> (ids [b, k], block embeddings [b, k, d]
        or None, block tokens [b, k, sb], block pad mask [b, k, sb])``: frozen embeddings (no
        gradient reaches them); None means uniform ``p(z|x)`` (random retrieval, the baseline)."""
        embeddings = self.embed_questions(question_tokens, question_pad_mask)
        ids, block_embeddings, block_tokens, block_pad_mask = retrieve(embeddings.detach())
        b, k, sb = block_tokens.shape
        if question_tokens.shape[1] + sb - 1 > self.max_sequence_length:
            raise ValueError(f"the reader's input ({question_tokens.shape[1]} question + {sb} block - 1 tokens) "
                             f"exceeds the {self.max_sequence_length} position embeddings")
        if block_embeddings is None:
            log_p_z = torch.full((b, k), -float(np.log(k)), device=embeddings.device) + 0.0 * embeddings.sum()
        else:
            scores = torch.einsum("bd,bkd->bk", embeddings.float(), block_embeddings.detach().float())
            log_p_z = torch.log_softmax(scores, dim=1)
        tokens, pad_mask, types = build_joint_inputs(question_tokens, question_pad_mask, block_tokens,
                                                     block_pad_mask, self.pad_id)
        length = tokens.shape[2]
        start, end = self.reader(tokens.reshape(b * k, length), pad_mask.reshape(b * k, length),
                                 types.reshape(b * k, length))
        in_block = types.reshape(b * k, length).bool()
        log_p_span = span_log_probs(start, end, valid_spans(in_block, self.max_span_width))
        return (log_p_z, log_p_span.view(b, k, length, self.max_span_width), tokens, types.bool(), ids)
