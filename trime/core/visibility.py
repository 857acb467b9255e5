"""Which memory entries each query may see (paper §2.2, §4).

One place for the visibility rules. The memory ops (``trime.core.memory_lse``,
``trime.core.mixtures``) work on a *layout*: queries ``[G, Nq, d]`` scored against
keys ``[G, Nk, d]`` group by group. A rule (``VisibilityRule``) says, for a chunk of
queries ``[q0, q1)``, which key span can matter (``key_range``) and which of those
keys are visible (``visible`` / ``mask_invisible_``), so no op ever builds a dense
mask for the whole batch.

- ``local`` (Eq. 2): groups are segments; position t sees positions j < t of
  its own segment (keys whose label is padding are never visible).
- ``long`` (Eq. 2 + 3): a group is segments concatenated in corpus order;
  position t sees every earlier position of its group with the same document
  id (consecutive-segment batching, ``trime.core.batching``, fills the batch).
  ``trime.core.objective.batch_memory_logsumexp`` sorts a batch's segments by
  corpus position to build that layout.
- ``ext`` (Eq. 4, §4.3): every token of the other segments of the batch plus
  (unless dropped) the own segment's earlier tokens (``ExtMemory``); in training
  the own segment is dropped for a whole batch with probability p (§4.3).

At evaluation, long memory is a FIFO (``trime.core.fifo.FifoMemory``) of the
(key, next token) pairs of the last S scored positions of the current document,
scored one input row at a time in stream order;
``WindowAndFifoMemory`` lets a position see the earlier positions of its input
window (local memory, context included) and the FIFO entries that lie *before*
the window, so no position is counted twice.
"""

import torch

from trime.core.logspace import NEG_INF
from trime.kernels.token_visibility import EXT, LOCAL, LONG, TokenVisibility

MEMORY_RULES = ("local", "long", "ext")
# Query chunk of the causal rules (local, long): a chunk's key span ends at its last query, so
# small chunks skip the triangle above the diagonal that no query sees (scripts/bench/memory_chunks.py
# on 2 CPU cores, d = 128: 2.4x at L = 512, 2.7x at L = 3,072 over chunks of 1,024).
CAUSAL_CHUNK = 128


class VisibilityRule:
    """What every rule provides, for a chunk of queries [q0, q1) of a [G, Nq] x [G, Nk] layout:

    - ``key_range(q0, q1) -> (k0, k1)``: the key span outside which no query of the
      chunk sees anything (k1 <= k0: the chunk sees no key);
    - ``visible(q0, q1, k0, k1)``: bool [G or 1, C, K], which keys of the span each query sees;
    - ``mask_invisible_(scores, q0, q1, k0, k1)``: scores [G, C, K] of invisible keys set to
      -inf in place (by default from ``visible``; a rule may do it block by block);
    - ``token_visibility(num_queries)``: the rule as ``TokenVisibility`` for a fused kernel, or
      a string saying why it has none;
    - ``query_chunk_size(chunk_size)``: the chunk the chunked op scores at a time (at most
      ``chunk_size``, the memory bound; causal rules use smaller chunks aligned to the diagonal).
    """

    def query_chunk_size(self, chunk_size: int) -> int:
        return chunk_size

    def token_visibility(self, num_queries: int):
        return f"{type(self).__name__} has no per-token description"

    def key_range(self, q0: int, q1: int):
        raise NotImplementedError

    def visible(self, q0: int, q1: int, k0: int, k1: int) -> torch.Tensor:
        raise NotImplementedError

    def mask_invisible_(self, scores: torch.Tensor, q0: int, q1: int, k0: int, k1: int):
        return scores.masked_fill_(~self.visible(q0, q1, k0, k1), NEG_INF)


class LocalMemory(VisibilityRule):
    """M_local (Eq. 2): query position t sees key positions j < t of the same segment.

    ``key_valid`` [G, Nk] marks keys that have a real label (not padding).
    Queries and keys share one position axis (queries are keys' positions).
    """

    def __init__(self, key_valid: torch.Tensor):
        self.key_valid = key_valid

    def query_chunk_size(self, chunk_size: int) -> int:
        return min(chunk_size, CAUSAL_CHUNK)

    def key_range(self, q0: int, q1: int):
        # the last query of the chunk (q1 - 1) sees keys up to q1 - 2
        return 0, max(q1 - 1, 0)

    def visible(self, q0: int, q1: int, k0: int, k1: int) -> torch.Tensor:
        device = self.key_valid.device
        query_pos = torch.arange(q0, q1, device=device)[:, None]
        key_pos = torch.arange(k0, k1, device=device)[None, :]
        earlier = key_pos < query_pos  # [C, K]
        return earlier[None] & self.key_valid[:, None, k0:k1]

    def token_visibility(self, num_queries: int):
        G, Nk = self.key_valid.shape
        positions = torch.arange(num_queries, device=self.key_valid.device).expand(G, -1)
        unused = torch.zeros(G, 1, dtype=torch.int32, device=self.key_valid.device)
        return TokenVisibility(LOCAL, self.key_valid, unused.expand(G, Nk), positions,
                               unused.expand(G, num_queries))


def _check_same_shape(name, ids, key_valid):
    if ids.shape != key_valid.shape:
        raise ValueError(f"{name} {tuple(ids.shape)} and key_valid {tuple(key_valid.shape)} "
                         "must have the same shape")


class LongMemory(VisibilityRule):
    """M_local ∪ M_long (Eq. 2 + 3) on a layout of segments concatenated in stream order.

    Each group holds segments sorted by their position in the corpus, so "earlier
    in the group and the same document" is exactly "earlier in my segment, or
    anywhere in an earlier segment of my document". ``doc_ids`` [G, Nk] (a group
    may mix documents; each document's positions must be contiguous);
    ``key_valid`` [G, Nk] as in LocalMemory. ``query_positions`` [Nq]: where each
    query sits on the key axis when the queries are only part of the memory (one
    worker's segments among the global batch); by default query i is key i. A
    chunk of queries only scans keys from the start of its first query's document.
    """

    def __init__(self, key_valid: torch.Tensor, doc_ids: torch.Tensor,
                 query_positions: torch.Tensor = None):
        _check_same_shape("doc_ids", doc_ids, key_valid)
        self.key_valid = key_valid
        self.doc_ids = doc_ids
        self.query_positions = query_positions
        # first position of each position's document run: running max of run starts
        positions = torch.arange(doc_ids.shape[1], device=doc_ids.device).expand_as(doc_ids)
        run_start = torch.ones_like(doc_ids, dtype=torch.bool)
        run_start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
        self.doc_start = torch.where(run_start, positions, torch.zeros_like(positions)).cummax(1).values

    def _positions(self, q0: int, q1: int) -> torch.Tensor:
        if self.query_positions is None:
            return torch.arange(q0, q1, device=self.doc_ids.device)
        return self.query_positions[q0:q1]

    def query_chunk_size(self, chunk_size: int) -> int:
        return min(chunk_size, CAUSAL_CHUNK)

    def key_range(self, q0: int, q1: int):
        if q1 <= q0:
            return 0, 0
        positions = self._positions(q0, q1)
        # the last query sees keys before its own position
        return int(self.doc_start[:, positions].min()), int(positions.max())

    def visible(self, q0: int, q1: int, k0: int, k1: int) -> torch.Tensor:
        positions = self._positions(q0, q1)
        key_pos = torch.arange(k0, k1, device=self.doc_ids.device)
        earlier = key_pos[None, :] < positions[:, None]  # [C, K]
        same_doc = self.doc_ids[:, None, k0:k1] == self.doc_ids[:, positions, None]
        return earlier[None] & self.key_valid[:, None, k0:k1] & same_doc

    def token_visibility(self, num_queries: int):
        positions = self._positions(0, num_queries).expand(self.doc_ids.shape[0], -1)
        return TokenVisibility(LONG, self.key_valid, self.doc_ids, positions,
                               self.doc_ids.gather(1, positions), key_starts=self.doc_start)


class ExtMemory(VisibilityRule):
    """M_ext in training (Eq. 4, §4.3): every token of the *other* segments of the batch,
    plus the earlier tokens of the query's own segment unless local memory is dropped
    (``keep_local=False``; the paper drops it for a whole batch with probability p).

    ``segment_ids`` [G, Nk]: which segment each key position belongs to;
    ``query_positions`` as in LongMemory.
    """

    def __init__(self, key_valid: torch.Tensor, segment_ids: torch.Tensor,
                 query_positions: torch.Tensor = None, keep_local: bool = True):
        _check_same_shape("segment_ids", segment_ids, key_valid)
        self.key_valid = key_valid
        self.segment_ids = segment_ids
        self.query_positions = query_positions
        self.keep_local = keep_local

    def key_range(self, q0: int, q1: int):
        return (0, self.key_valid.shape[1]) if q1 > q0 else (0, 0)

    def visible(self, q0: int, q1: int, k0: int, k1: int) -> torch.Tensor:
        device = self.key_valid.device
        positions = (torch.arange(q0, q1, device=device) if self.query_positions is None
                     else self.query_positions[q0:q1])
        same_segment = self.segment_ids[:, None, k0:k1] == self.segment_ids[:, positions, None]
        visible = ~same_segment
        if self.keep_local:
            earlier = torch.arange(k0, k1, device=device)[None, :] < positions[:, None]
            visible = visible | (same_segment & earlier[None])
        return visible & self.key_valid[:, None, k0:k1]

    def token_visibility(self, num_queries: int):
        G = self.segment_ids.shape[0]
        positions = (torch.arange(num_queries, device=self.segment_ids.device)
                     if self.query_positions is None else self.query_positions).expand(G, -1)
        return TokenVisibility(EXT, self.key_valid, self.segment_ids.expand(G, -1), positions,
                               self.segment_ids.expand(G, -1).gather(1, positions),
                               keep_local=self.keep_local)


def check_memory_rule(rule: str) -> None:
    """Raise a clear error for an unknown rule."""
    if rule not in MEMORY_RULES:
        raise ValueError(f"unknown memory rule {rule!r}; choose one of {', '.join(MEMORY_RULES)}")


def build_visibility(rule: str, key_valid: torch.Tensor, doc_ids: torch.Tensor = None,
                     query_positions: torch.Tensor = None):
    """The visibility rule object for ``rule`` over a [G, N] layout."""
    if rule == "long":
        if doc_ids is None:
            raise ValueError("the long memory rule needs the document id of every position")
        return LongMemory(key_valid, doc_ids, query_positions)
    check_memory_rule(rule)
    return LocalMemory(key_valid)


def memory_labels(src_tokens: torch.Tensor, target: torch.Tensor, pad: int):
    """Next token x_j of every position j, and whether position j can be a memory entry.

    x_j is the target at j; where the target is padding (for instance the context
    positions that ``--context-window`` prepends) it is the next input token,
    which the model has seen. Returns (labels [B, T], valid [B, T] bool).
    """
    next_input = torch.full_like(src_tokens, pad)
    next_input[:, :-1] = src_tokens[:, 1:]
    labels = torch.where(target != pad, target, next_input)
    return labels, labels != pad


class WindowAndFifoMemory(VisibilityRule):
    """Local memory of one input window plus the FIFO entries that precede the window.

    Layout: one group (G = 1); keys = [FIFO entries (Nf), window positions (Nq)].
    A query at window position t sees window positions j < t with a real label
    (``window_valid``) and FIFO entries whose label offset is before
    ``window_start`` (the offset of the window's first label; later ones are in
    the window already) and, with reset at documents, of the query's document.
    """

    def __init__(self, window_valid: torch.Tensor, query_docs: torch.Tensor, fifo,
                 window_start: int):
        self.local = LocalMemory(window_valid)
        self.num_fifo = len(fifo)
        self.query_docs = query_docs  # [1, Nq]
        if self.num_fifo:
            before = fifo.offsets < window_start
            self.fifo_visible = before[None, None, :]  # [1, 1, Nf]
            self.fifo_docs = fifo.docs if fifo.reset_at_documents else None

    def key_range(self, q0: int, q1: int):
        return 0, self.num_fifo + max(q1 - 1, 0)

    def _fifo_visible(self, q0, q1, f0, f1):
        fifo = self.fifo_visible[:, :, f0:f1]
        if self.fifo_docs is not None:
            return fifo & (self.fifo_docs[None, None, f0:f1] == self.query_docs[:, q0:q1, None])
        return fifo  # [1, 1, F]: the same for every query

    def mask_invisible_(self, scores, q0, q1, k0, k1):
        """Invisible keys' scores to -inf, block by block (the FIFO block often needs no mask
        at all); ``visible`` is derived from it."""
        f1 = min(k1, self.num_fifo)
        if k0 < f1:
            fifo = self._fifo_visible(q0, q1, k0, f1)
            if not bool(fifo.all()):
                scores[..., :f1 - k0].masked_fill_(~fifo, NEG_INF)
        w0, w1 = max(k0, self.num_fifo) - self.num_fifo, k1 - self.num_fifo
        if w0 < w1:
            window = scores[..., max(k0, self.num_fifo) - k0:]
            window.masked_fill_(~self.local.visible(q0, q1, w0, w1), NEG_INF)
        return scores

    def token_visibility(self, num_queries: int):
        return ("evaluation's window + FIFO memory is scored by the chunked op (it runs one "
                "window at a time, without gradients)")

    def visible(self, q0: int, q1: int, k0: int, k1: int) -> torch.Tensor:
        scores = torch.zeros(1, q1 - q0, k1 - k0, device=self.query_docs.device)
        return torch.isfinite(self.mask_invisible_(scores, q0, q1, k0, k1))
