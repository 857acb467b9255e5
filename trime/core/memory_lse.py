"""The memory log-sum-exp of Eq. 5: the one op the training loss needs from memory.

For queries g(c) and memory keys g(c_j) with labels x_j under a visibility rule
(``trime.core.visibility``)::

    lse_all = log Σ_{j visible} exp(sim_j),   lse_pos = log Σ_{j visible, x_j = w*} exp(sim_j)

with sim_j = g(c)·g(c_j) / (√d τ). Computed in chunks of queries and in fp32; the
backward recomputes the scores chunk by chunk (like flash attention), so the extra
memory is O(N · chunk), never O(N²). This is the seam a fused GPU kernel replaces:
same arguments, same results.
"""

import math

import torch

from trime.core.logspace import NEG_INF, finite_or_zero


def chunk_scores(queries, keys, scale, q0, q1, k0, k1):
    """fp32 similarity scores [G, C, K] of queries[q0:q1] against keys[k0:k1]."""
    q = queries[:, q0:q1].float() * scale  # scale the C×d side, not the C×K scores
    k = keys[:, k0:k1].float()
    if q.shape[0] == 1:  # one group (evaluation): a plain matmul is faster than bmm on CPU
        # rows padded to a multiple of 64 floats: an odd number of keys (e.g. 12,799)
        # otherwise makes the matmul ~1.7x slower on CPU
        num_keys = k.shape[1]
        out = torch.empty(q.shape[1], -(-num_keys // 64) * 64, dtype=q.dtype, device=q.device)
        return torch.mm(q[0], k[0].t(), out=out[:, :num_keys])[None]
    return torch.bmm(q, k.transpose(1, 2))


def _memory_chunks(queries, keys, key_labels, query_targets, visibility, scale, chunk_size,
                   top_k=None):
    """Yield (q0, q1, k0, k1, scores, visible, positive) for each chunk of queries.

    scores [G, C, K] fp32 over the chunk's key span; visible/positive are bool
    masks of the same shape (positive = visible and x_j = w*). With ``top_k``, a query's
    visible keys are only its ``top_k`` highest-scoring visible keys (recomputed, hence the
    same, in the backward pass).
    """
    num_queries = queries.shape[1]
    chunk_size = visibility.query_chunk_size(chunk_size)
    for q0 in range(0, num_queries, chunk_size):
        q1 = min(num_queries, q0 + chunk_size)
        k0, k1 = visibility.key_range(q0, q1)
        if k1 <= k0:
            continue
        scores = chunk_scores(queries, keys, scale, q0, q1, k0, k1)
        visible = visibility.visible(q0, q1, k0, k1)  # [G or 1, C, K]
        if top_k is not None and top_k < k1 - k0:
            best = scores.masked_fill(~visible, NEG_INF).topk(top_k, dim=-1).indices
            visible = visible & torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, best, True)
        positive = visible & (key_labels[:, None, k0:k1] == query_targets[:, q0:q1, None])
        yield q0, q1, k0, k1, scores, visible, positive


class _MemoryLogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries, keys, key_labels, query_targets, visibility, scale, chunk_size, top_k):
        G, Nq, _ = queries.shape
        lse_all = torch.full((G, Nq), NEG_INF, dtype=torch.float32, device=queries.device)
        lse_pos = torch.full_like(lse_all, NEG_INF)
        chunks = _memory_chunks(queries, keys, key_labels, query_targets, visibility, scale, chunk_size,
                                top_k)
        for q0, q1, k0, k1, scores, visible, positive in chunks:
            lse_all[:, q0:q1] = scores.masked_fill(~visible, NEG_INF).logsumexp(-1)
            lse_pos[:, q0:q1] = scores.masked_fill(~positive, NEG_INF).logsumexp(-1)
        ctx.save_for_backward(queries, keys, key_labels, query_targets, lse_all, lse_pos)
        ctx.visibility, ctx.scale, ctx.chunk_size, ctx.top_k = visibility, scale, chunk_size, top_k
        return lse_all, lse_pos

    @staticmethod
    def backward(ctx, grad_all, grad_pos):
        queries, keys, key_labels, query_targets, lse_all, lse_pos = ctx.saved_tensors
        visibility, scale, chunk_size = ctx.visibility, ctx.scale, ctx.chunk_size
        grad_all = torch.zeros_like(lse_all) if grad_all is None else grad_all.float()
        grad_pos = torch.zeros_like(lse_pos) if grad_pos is None else grad_pos.float()
        safe_all, safe_pos = finite_or_zero(lse_all), finite_or_zero(lse_pos)
        keys32 = keys.float()
        need_queries, need_keys = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        d_queries = torch.zeros(queries.shape, dtype=torch.float32, device=queries.device) \
            if need_queries else None
        d_keys = torch.zeros(keys.shape, dtype=torch.float32, device=keys.device) \
            if need_keys else None
        chunks = _memory_chunks(queries, keys, key_labels, query_targets, visibility, scale, chunk_size,
                                ctx.top_k)
        for q0, q1, k0, k1, scores, visible, positive in chunks:
            # d lse / d score_j = softmax weight of j within its set
            p_all = torch.exp(scores - safe_all[:, q0:q1, None]).masked_fill(~visible, 0.0)
            p_pos = torch.exp(scores - safe_pos[:, q0:q1, None]).masked_fill(~positive, 0.0)
            d_scores = grad_all[:, q0:q1, None] * p_all + grad_pos[:, q0:q1, None] * p_pos
            d_scores = d_scores * scale
            if need_queries:
                d_queries[:, q0:q1] += torch.bmm(d_scores, keys32[:, k0:k1])
            if need_keys:  # not with detached keys (--detach-memory)
                d_keys[:, k0:k1] += torch.bmm(d_scores.transpose(1, 2), queries[:, q0:q1].float())
        return (
            d_queries.to(queries.dtype) if need_queries else None,
            d_keys.to(keys.dtype) if need_keys else None,
            None, None, None, None, None, None,
        )


def memory_logsumexp(queries, keys, key_labels, query_targets, visibility,
                     temperature: float = 1.0, chunk_size: int = 1024, top_k: int = None,
                     kernel: str = "chunked"):
    """Log-sum-exp of memory similarities over visible and over positive keys.

    Args:
        queries: [G, Nq, d] query representations g(c).
        keys: [G, Nk, d] memory keys g(c_j) (may be the same tensor as queries).
        key_labels: [G, Nk] next token x_j of each memory entry.
        query_targets: [G, Nq] the target w* of each query.
        visibility: a ``trime.core.visibility.VisibilityRule``.
        temperature: τ of Eq. 6 (1 in training); divides the memory logits only.
        chunk_size: queries per chunk.
        top_k: keep only each query's ``top_k`` most similar visible keys (the authors' MT
            ``--topk-mem``); gradients flow through the kept scores only, as through
            ``torch.topk``'s values. None: every visible key.
        kernel: ``chunked`` (this file's op), ``fused`` (the Triton kernel) or ``auto``
            (fused on CUDA where it can run); ``trime.kernels.dispatch`` says why not.
    Returns:
        (lse_all, lse_pos), fp32 [G, Nq]; -inf where the set is empty.
        sim = g·g' / √d / τ (scaled dot product, §3).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"the memory temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None for every visible key), got {top_k}")
    scale = 1.0 / (math.sqrt(queries.shape[-1]) * temperature)
    if kernel != "chunked":
        from trime.kernels.dispatch import choose

        backend, token_visibility = choose(kernel, queries, keys, visibility, top_k)
        if backend == "fused":
            from trime.kernels.triton_memory_lse import fused_memory_logsumexp

            return fused_memory_logsumexp(queries, keys, key_labels, query_targets,
                                          token_visibility, scale)
    return _MemoryLogSumExp.apply(
        queries, keys, key_labels, query_targets, visibility, scale, int(chunk_size),
        None if top_k is None else int(top_k)
    )
