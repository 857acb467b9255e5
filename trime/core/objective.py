"""The TRIME training objective (paper Eq. 5) over a batch of segments, for any frontend.

    -log P(w* | c) = logaddexp(log Z_vocab, lse_all) - logaddexp(s_w*, lse_pos)

``TrimeObjective`` is the objective in one piece: a frontend (fairseq's criteria, ``trime.hf``)
hands it the vocabulary terms of its model (``VocabTerms``), the queries g(c) that are also the
memory keys, the targets and which tokens are memory, and gets the per-token loss back
(``LossTerms``). Inside, ``batch_memory_logsumexp`` lays a batch [B, T] out for a memory rule
(local: each segment its own group; long / ext: the batch's segments, or the global batch across
workers, in corpus order as one group) and calls the memory op (``trime.core.memory_lse``);
``trime_nll`` combines its result with the vocabulary terms.
"""

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
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



# the memory rules of training (paper §4): none = the plain LM loss (Eq. 1), the vanilla baseline
OBJECTIVE_RULES = ("none", "local", "long", "ext")


@dataclass
class VocabTerms:
    """The vocabulary side of Eq. 5 per target token, fp32 [B, T]: ``target_score`` s_w* (the
    target's logit), ``log_partition`` log Z_vocab; for label smoothing ``smoothing``
    Σ_v -log p_vocab(v) over the ``size`` words of the output vocabulary."""

    target_score: torch.Tensor
    log_partition: torch.Tensor
    smoothing: Optional[torch.Tensor] = None
    size: Optional[int] = None


@dataclass
class LossTerms:
    """Per target token, fp32 [B, T]: ``loss`` (what is optimised), ``nll`` (-log P(w* | c) of
    Eq. 5; the vocabulary's alone when no memory is used) and ``lm_nll`` (the vocabulary-only NLL
    of the same model)."""

    loss: torch.Tensor
    nll: torch.Tensor
    lm_nll: torch.Tensor


def trime_loss_terms(vocab: VocabTerms, memory_lse=None, label_smoothing: float = 0.0) -> LossTerms:
    """Eq. 5 from the vocabulary terms and the memory's (lse_all, lse_pos), or the plain LM loss
    (Eq. 1) when ``memory_lse`` is None. Label smoothing ε is fairseq's with Eq. 5's NLL, its
    smoothing term on the vocabulary softmax only: (1 - ε - ε/(V-1)) · nll + ε/(V-1) · Σ_v -log p(v)."""
    lm_nll = vocab.log_partition - vocab.target_score
    nll = lm_nll if memory_lse is None else trime_nll(vocab.target_score, vocab.log_partition,
                                                      *memory_lse)
    loss = nll
    if label_smoothing > 0:
        if vocab.smoothing is None or vocab.size is None:
            raise ValueError("label smoothing needs the vocabulary terms' smoothing and size")
        eps_i = label_smoothing / (vocab.size - 1)
        loss = (1.0 - label_smoothing - eps_i) * nll + eps_i * vocab.smoothing
    return LossTerms(loss, nll, lm_nll)


def keeps_own_segment(drop_prob: float, seed: int, update: int, draw: int) -> bool:
    """Whether a training batch keeps its own segment's earlier tokens in ext memory (§4.3: left
    out with probability p, drawn once per batch), from (seed, update, draw within the update):
    the same on every worker and after a resume."""
    return bool(np.random.default_rng([seed, update, draw]).random() >= drop_prob)


@dataclass
class TrimeObjective:
    """The TRIME loss (Eq. 5) with one memory rule (§4), as every frontend uses it.

    rule: none (the plain LM loss, Eq. 1), local, long or ext (``batch_memory_logsumexp``).
    temperature: τ of the memory logits g·g' / √d / τ; top_k: keep each query's k most similar
    memory entries (the authors' MT loss); detach_keys: memory keys carry no gradient (Table 11's
    "w/o back-prop to memory"); label_smoothing: ε (``trime_loss_terms``); ce_warmup_updates: the
    first updates train with the plain LM loss; chunk_size, kernel: as in ``memory_logsumexp``.
    """

    rule: str = "local"
    temperature: float = 1.0
    top_k: Optional[int] = None
    detach_keys: bool = False
    label_smoothing: float = 0.0
    ce_warmup_updates: int = 0
    chunk_size: int = 1024
    kernel: str = "auto"

    def __post_init__(self):
        if self.rule not in OBJECTIVE_RULES:
            raise ValueError(f"the memory rule must be one of {', '.join(OBJECTIVE_RULES)}, got {self.rule!r}")
        if not self.temperature > 0:
            raise ValueError(f"the memory temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 (or None for every entry), got {self.top_k}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.ce_warmup_updates < 0:
            raise ValueError(f"the CE warm-up must be >= 0 updates, got {self.ce_warmup_updates}")
        if self.chunk_size < 1:
            raise ValueError(f"the memory chunk size must be >= 1, got {self.chunk_size}")

    def uses_memory(self, training: bool, num_updates: int) -> bool:
        """False for rule none and, in training, during the CE warm-up (evaluation always uses it)."""
        return self.rule != "none" and not (training and num_updates < self.ce_warmup_updates)

    def __call__(self, vocab: VocabTerms, queries, labels, targets, key_valid, *, training=True,
                 num_updates=0, doc_ids=None, segment_starts=None, keep_local=True,
                 memory_logsumexp: Callable = None) -> LossTerms:
        """The loss terms of a batch [B, T]: queries [B, T, d] (g(c), also the memory keys),
        labels (each key's token), targets, key_valid (which tokens are memory), doc_ids and
        segment_starts (long memory), keep_local (ext: the own segment's earlier tokens).
        ``memory_logsumexp``: ``batch_memory_logsumexp`` unless the frontend's memory is larger
        than the batch (``trime.core.distributed``: the global batch across workers)."""
        memory_lse = None
        if self.uses_memory(training, num_updates):
            memory_lse = (memory_logsumexp or batch_memory_logsumexp)(
                self.rule, queries, labels, targets, key_valid, self.chunk_size, doc_ids,
                segment_starts, keep_local=keep_local, detach_keys=self.detach_keys,
                temperature=self.temperature, top_k=self.top_k, kernel=self.kernel)
        return trime_loss_terms(vocab, memory_lse, self.label_smoothing)
