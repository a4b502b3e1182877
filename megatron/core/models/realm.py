"""REALM: a retriever (the ICT biencoder) and a reader (BERT) trained together on the marginal
likelihood of masked salient spans (Guu et al., 2020).

For a query x with masked tokens y_1..y_m and candidate documents z_0..z_{k-1} (z_0 the null
document, the rest the top blocks by inner product, the query's own document excluded):

    log p(z | x)   = log_softmax_z( Embed_query(x) . Embed_doc(z) )           (over the k candidates)
    log p(y_j | x) = logsumexp_z( log p(z | x) + log p(y_j | z, x) )          (per masked token)
    loss           = - mean_j log p(y_j | x)                                   (0 with no masked token)

The reader reads the joint input ``[CLS] query [SEP] title [SEP] body [SEP]`` (token type 0 for
the query, 1 for the block) and predicts every masked token; the masks lie in the query, which
comes first, so their positions are the same for every candidate. The document embeddings of the
candidates are recomputed with the current context tower, so both towers and the reader learn.

Retrieval itself (the index, the own-document exclusion, the block tokens) lives in the training
layer: ``forward`` takes a ``retrieve`` callable, called with the detached query embeddings.

State-dict names: ``retriever.`` (the biencoder's ``query_model`` / ``context_model`` or
``shared_model``) and ``reader.`` (a BERT without binary head: ``language_model``, ``lm_head``).
"""
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from megatron.core.models.bert import BertModel, bert_extended_attention_mask
from megatron.core.models.biencoder import BiEncoderModel
from megatron.core.parallel_state import ProcessGroups, get_process_groups
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region
from megatron.core.transformer import TransformerConfig

NULL_DOCUMENT = 0
"""Candidate slot of the null document (empty title and body)."""


def build_joint_inputs(query_tokens: torch.Tensor, query_pad_mask: torch.Tensor, block_tokens: torch.Tensor,
                       block_pad_mask: torch.Tensor, pad_id: int) -> Tuple[torch.Tensor, ...]:
    """``[CLS] query [SEP] title [SEP] body [SEP]`` for every (query, candidate) pair.

    ``query_tokens [b, sq]`` are ``[CLS] query [SEP]`` + padding; ``block_tokens [b, k, sb]`` are
    ``[CLS] title [SEP] body [SEP]`` + padding; pad masks are 1 on real tokens. The block's own
    ``[CLS]`` is dropped. Returns ``(tokens, pad_mask, token_types)``, each ``[b, k, sq + sb - 1]``.
    """
    b, k, sb = block_tokens.shape
    sq = query_tokens.shape[1]
    length = sq + sb - 1
    query_len = query_pad_mask.long().sum(dim=1).view(b, 1, 1)  # [b, 1, 1]
    block_len = block_pad_mask.long().sum(dim=2).view(b, k, 1)  # [b, k, 1]
    j = torch.arange(length, device=query_tokens.device).view(1, 1, length)
    in_query = j < query_len  # [b, 1, L]
    in_block = (j >= query_len) & (j < query_len + block_len - 1)  # [b, k, L]
    query_part = query_tokens.gather(1, j.view(1, length).clamp(max=sq - 1).expand(b, length)).unsqueeze(1)
    block_pos = (j - query_len + 1).clamp(min=0, max=sb - 1).expand(b, k, length)
    block_part = block_tokens.gather(2, block_pos)
    pad = torch.full_like(block_part, pad_id)
    tokens = torch.where(in_query, query_part.expand(b, k, length), torch.where(in_block, block_part, pad))
    return tokens, (in_query | in_block).long(), in_block.long()


def realm_marginal_loss(log_p_z: torch.Tensor, log_p_y_given_z: torch.Tensor,
                        mask_valid: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The negative marginal log-likelihood and ``retrieval_utility``.

    ``log_p_z [b, k]``: log p(z|x) over the candidates (slot 0 the null document);
    ``log_p_y_given_z [b, k, m]``: the reader's log-probability of each masked token's label;
    ``mask_valid [b, m]``: 1 on real masked positions. ``retrieval_utility`` is the marginal
    log-likelihood minus the null document's own log p(y|z_0, x), averaged over masked tokens.
    """
    valid = mask_valid.to(log_p_y_given_z.dtype)
    marginal = torch.logsumexp(log_p_z.unsqueeze(2) + log_p_y_given_z, dim=1)  # [b, m]
    count = valid.sum()
    denominator = count.clamp(min=1.0)  # no masked token: loss 0, not NaN
    loss = -(marginal * valid).sum() / denominator
    with torch.no_grad():
        utility = ((marginal - log_p_y_given_z[:, NULL_DOCUMENT, :]) * valid).sum() / denominator
    return loss, {"retrieval_utility": utility}


class REALMModel(nn.Module):
    """Retriever (ICT biencoder) and reader (BERT, masked-LM head, no binary head), one pipeline stage."""

    def __init__(self, config: TransformerConfig, vocab_size: int, max_sequence_length: int,
                 projection_dim: int = 0, shared_query_context_model: bool = False, pad_id: int = 0,
                 true_vocab_size: Optional[int] = None, pg: Optional[ProcessGroups] = None):
        super().__init__()
        self.pg = pg if pg is not None else get_process_groups()
        if self.pg.pipeline_model_parallel_size != 1:
            raise ValueError(f"REALMModel runs on one pipeline stage; got pipeline_model_parallel_size "
                             f"{self.pg.pipeline_model_parallel_size}")
        if config.sequence_parallel and self.pg.tensor_model_parallel_size > 1:
            raise ValueError("REALMModel reads masked positions only and does not support sequence parallelism")
        self.config = config
        self.pad_id = pad_id
        # Rows past the tokenizer's vocabulary only pad the embedding for tensor parallelism; they are
        # left out of the reader's softmax, so every layout (each pads differently) predicts alike.
        self.true_vocab_size = true_vocab_size
        self.max_sequence_length = max_sequence_length
        self.retriever = BiEncoderModel(config, vocab_size, max_sequence_length, num_tokentypes=2,
                                        projection_dim=projection_dim,
                                        shared_query_context_model=shared_query_context_model, pg=self.pg)
        self.reader = BertModel(config, vocab_size, max_sequence_length, num_tokentypes=2, add_binary_head=False,
                                parallel_output=True, pg=self.pg)

    def set_input_tensor(self, input_tensor) -> None:
        received = input_tensor if isinstance(input_tensor, (list, tuple)) else [input_tensor]
        if any(t is not None for t in received):
            raise ValueError("REALMModel runs on one pipeline stage and cannot take received activations")

    def embed_queries(self, tokens: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        query_tower, _ = self.retriever.towers()
        return query_tower(tokens, pad_mask, torch.zeros_like(tokens))

    def embed_blocks(self, tokens: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        _, context_tower = self.retriever.towers()
        return context_tower(tokens, pad_mask, torch.zeros_like(tokens))

    def reader_log_probs(self, tokens: torch.Tensor, pad_mask: torch.Tensor, token_types: torch.Tensor,
                         mask_positions: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over the (true) vocabulary ``[rows, m, vocab]`` at ``mask_positions [rows, m]``.

        Only the masked positions go through the LM head (logits of every position of every
        candidate would not fit); under tensor parallelism the vocabulary shards are gathered."""
        lm = self.reader.language_model
        hidden = lm(tokens, None, bert_extended_attention_mask(pad_mask), tokentype_ids=token_types)  # [s, rows, h]
        index = mask_positions.t().unsqueeze(2).expand(-1, -1, hidden.shape[2])  # [m, rows, h]
        selected = hidden.gather(0, index)  # [m, rows, h]
        logits = self.reader.lm_head(selected, self.reader.word_embeddings_weight())  # [m, rows, v/tp]
        if self.pg.tensor_model_parallel_size > 1:
            logits = gather_from_tensor_model_parallel_region(logits, self.pg.tp)
        logits = logits.float()
        if self.true_vocab_size is not None and self.true_vocab_size < logits.shape[-1]:
            logits = logits[..., :self.true_vocab_size]
        return torch.log_softmax(logits, dim=-1).transpose(0, 1)  # [rows, m, vocab]

    def forward(self, query_tokens: torch.Tensor, query_pad_mask: torch.Tensor, mask_positions: torch.Tensor,
                mask_labels: torch.Tensor, mask_valid: torch.Tensor, retrieve: Callable):
        """(loss, metrics). ``retrieve(query_embeddings [b, d]) -> (block_tokens [b, k, sb],
        block_pad_mask [b, k, sb])`` with the null document in slot 0."""
        b, m = mask_positions.shape
        query_embeddings = self.embed_queries(query_tokens, query_pad_mask)  # [b, d]
        block_tokens, block_pad_mask = retrieve(query_embeddings.detach())
        k, sb = block_tokens.shape[1], block_tokens.shape[2]
        if query_tokens.shape[1] + sb - 1 > self.max_sequence_length:
            raise ValueError(f"the joint input ({query_tokens.shape[1]} query + {sb} block - 1 tokens) exceeds the "
                             f"{self.max_sequence_length} position embeddings")
        block_embeddings = self.embed_blocks(block_tokens.reshape(b * k, sb),
                                             block_pad_mask.reshape(b * k, sb)).view(b, k, -1)  # [b, k, d]
        scores = torch.einsum("bd,bkd->bk", query_embeddings.float(), block_embeddings.float())
        log_p_z = torch.log_softmax(scores, dim=1)  # [b, k]

        tokens, pad_mask, types = build_joint_inputs(query_tokens, query_pad_mask, block_tokens, block_pad_mask,
                                                     self.pad_id)
        positions = mask_positions.unsqueeze(1).expand(b, k, m).reshape(b * k, m)
        log_probs = self.reader_log_probs(tokens.reshape(b * k, -1), pad_mask.reshape(b * k, -1),
                                          types.reshape(b * k, -1), positions).view(b, k, m, -1)  # [b, k, m, V]
        labels = mask_labels.long().view(b, 1, m, 1).expand(b, k, m, 1)
        log_p_y_given_z = log_probs.gather(3, labels).squeeze(3)  # [b, k, m]
        loss, metrics = realm_marginal_loss(log_p_z, log_p_y_given_z, mask_valid)
        with torch.no_grad():
            metrics.update(masked_span_accuracy(log_p_z, log_probs, mask_labels, mask_valid))
            metrics["null_doc_prob"] = log_p_z[:, NULL_DOCUMENT].exp().mean()
        return loss, metrics


def masked_span_accuracy(log_p_z: torch.Tensor, log_probs: torch.Tensor, mask_labels: torch.Tensor,
                         mask_valid: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Accuracy of the marginal prediction ``argmax_y sum_z p(z|x) p(y|z,x)``: per masked token,
    and per query (every masked token of the span right). Queries without a mask are left out."""
    marginal = torch.logsumexp(log_p_z[:, :, None, None] + log_probs, dim=1)  # [b, m, V]
    correct = (marginal.argmax(dim=-1) == mask_labels.long()) & mask_valid.bool()  # [b, m]
    valid = mask_valid.bool()
    has_mask = valid.any(dim=1)
    token_acc = correct.sum().float() / valid.sum().clamp(min=1).float()
    span_right = (correct | ~valid).all(dim=1) & has_mask
    span_acc = span_right.sum().float() / has_mask.sum().clamp(min=1).float()
    return {"masked_token_acc": token_acc * 100.0, "masked_span_acc": span_acc * 100.0}
