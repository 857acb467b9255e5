"""The TRIME training objective (paper Eq. 5) over a batch of segments.

    -log P(w* | c) = logaddexp(log Z_vocab, lse_all) - logaddexp(s_w*, lse_pos)

``batch_memory_logsumexp`` lays a batch [B, T] out for a memory rule (local: each
segment its own group; long / ext: the batch's segments, or the global batch across
workers, in corpus order as one group) and calls the memory op
(``trime.core.memory_lse``); ``trime_nll`` combines its result with the vocabulary
terms.
"""

from dataclasses import dataclass

import torch

from trime.core.memory_lse import memory_logsumexp
from trime.core.visibility import ExtMemory, build_visibility


@dataclass
class BatchMemory:
    """The memory of a batch when it is larger than the batch (``--memory-across-workers``).

    keys [Bg, T, d], labels / key_valid / doc_ids [Bg, T], segment_starts [Bg] of
    the global batch; ``own_rows`` [B]: the rows of the global batch that are
    this batch's segments, in this batch's order.
    """

    keys: torch.Tensor
    labels: torch.Tensor
    key_valid: torch.Tensor
    doc_ids: torch.Tensor
    segment_starts: torch.Tensor
    own_rows: torch.Tensor


def batch_memory_logsumexp(rule, queries, labels, targets, key_valid, chunk_size=1024,
                           doc_ids=None, segment_starts=None, memory: BatchMemory = None,
                           keep_local=True, detach_keys=False, temperature=1.0, top_k=None,
                           kernel="chunked"):
    """memory_logsumexp over a batch of segments [B, T] under a visibility rule.

    - ``local``: each segment is its own group (a larger ``memory`` changes nothing).
    - ``long``: the memory's segments (by default the batch itself) are sorted by
      ``segment_starts`` (their offsets in the corpus) and concatenated into one
      group, so "earlier in the group, same ``doc_ids``" is "earlier in the
      document" whatever order the batch came in; each query sits at its own
      segment's place in that group.
    - ``ext``: the same layout; a query sees every token of the other segments and,
      if ``keep_local``, the earlier tokens of its own segment (``ExtMemory``).
    ``detach_keys``: the memory keys carry no gradient, only the queries do (the paper's
    "w/o back-prop to memory" ablation, Table 11).
    ``temperature``, ``top_k``, ``kernel``: as in ``memory_logsumexp`` (the authors' MT loss divides the
    memory logits by 10 and keeps each query's 8 most similar keys).
    Returns (lse_all, lse_pos) as fp32 [B, T], in the batch's own order.
    """
    if rule == "local":
        visibility = build_visibility(rule, key_valid)
        keys = queries.detach() if detach_keys else queries
        return memory_logsumexp(queries, keys, labels, targets, visibility, temperature, chunk_size,
                                top_k, kernel)
    if memory is None:
        if rule == "long" and (doc_ids is None or segment_starts is None):
            raise ValueError("the long memory rule needs each segment's corpus offset and "
                             "document ids")
        rows = torch.arange(targets.shape[0], device=targets.device)
        memory = BatchMemory(queries, labels, key_valid,
                             torch.zeros_like(labels) if doc_ids is None else doc_ids,
                             rows if segment_starts is None else segment_starts, rows)
    B, T = targets.shape
    num_memory = memory.labels.shape[0]
    if memory.labels.shape[1] != T:
        raise ValueError(f"memory segments have {memory.labels.shape[1]} positions, queries {T}")
    order = torch.argsort(memory.segment_starts, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(num_memory, device=order.device)

    def flat(x):
        return x[order].reshape(1, num_memory * T, *x.shape[2:])

    own_rank = rank[memory.own_rows]
    query_order = torch.argsort(own_rank)  # this batch's rows in stream order
    query_positions = ((own_rank[query_order] * T)[:, None]
                       + torch.arange(T, device=order.device)[None, :]).reshape(-1)
    if rule == "long":
        visibility = build_visibility("long", flat(memory.key_valid), flat(memory.doc_ids),
                                      query_positions)
    else:  # ext: the segment of a key is its row in the layout
        segment_ids = torch.arange(num_memory, device=order.device).repeat_interleave(T)[None]
        visibility = ExtMemory(flat(memory.key_valid), segment_ids, query_positions, keep_local)
    keys = flat(memory.keys)
    lse_all, lse_pos = memory_logsumexp(
        queries[query_order].reshape(1, B * T, -1), keys.detach() if detach_keys else keys,
        flat(memory.labels),
        targets[query_order].reshape(1, B * T), visibility, temperature, chunk_size, top_k, kernel)
    restored = []
    for lse in (lse_all, lse_pos):
        out = torch.empty_like(lse.view(B, T))
        out[query_order] = lse.view(B, T)
        restored.append(out)
    return tuple(restored)


def trime_nll(target_vocab_score, vocab_log_partition, lse_all, lse_pos):
    """-log P(w* | c) of Eq. 5 from its four log-space parts (all fp32, same shape)."""
    numerator = torch.logaddexp(target_vocab_score, lse_pos)
    denominator = torch.logaddexp(vocab_log_partition, lse_all)
    return denominator - numerator

