"""The memory log-sum-exp of Eq. 5 as one fused Triton kernel (forward and backward).

Same quantities as the chunked op (``trime.core.memory_lse``), per query c:

    lse_all = log Σ_{j visible} exp(sim_j),   lse_pos = log Σ_{j visible, x_j = w*} exp(sim_j)

computed like flash attention: a program takes a block of queries, walks the key blocks of the
span its rule allows (``TokenVisibility.key_spans``: local/long memory stop at the block's last
position and long memory starts at its first document's start, so local memory costs O(N·L)),
keeps an online log-sum-exp for both sets in fp32 and never stores a score. The backward pass
recomputes each score block: d lse / d sim_j is j's softmax weight within its set, so
dQ = dS·K (one program owns a query block: plain stores) and dK += dSᵀ·Q (key blocks are shared
by query blocks: fp32 atomic adds). The feature dimension is walked in blocks of ``BLOCK_D``, so
d = 1,024 fits.

Inputs may be fp32, fp16 or bf16; every dot accumulates in fp32 (fp32 inputs in IEEE fp32, not
TF32; half inputs on the tensor cores, dS cast to their type as flash attention does). Triton's
CPU interpreter (``TRITON_INTERPRET=1``, how the tests run this file) computes bf16 ``tl.dot``
wrongly (Triton 3.8), so there bf16 blocks are widened to fp32 first.
"""

import os

import torch
import triton
import triton.language as tl

from trime.kernels.token_visibility import TokenVisibility

BLOCK_Q, BLOCK_K = 64, 64


def _block_d(dim: int) -> int:
    return min(128, max(16, triton.next_power_of_2(dim)))


@triton.jit
def _dot(a, b, HALF: tl.constexpr):
    """a·b accumulated in fp32: half inputs on the tensor cores, fp32 ones in full fp32 (not
    TF32, which would round the inputs to 10 bits)."""
    if HALF:
        return tl.dot(a, b, out_dtype=tl.float32)
    return tl.dot(a, b, out_dtype=tl.float32, input_precision="ieee")


@triton.jit
def _scores(q_base, k_base, offs_q, offs_k, q_in, k_in, D, stride_qn, stride_kn,
            BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
            HALF: tl.constexpr):
    """fp32 scores [BLOCK_Q, BLOCK_K] of a query block against a key block (unscaled)."""
    scores = tl.zeros((BLOCK_Q, BLOCK_K), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_in = offs_d < D
        q = tl.load(q_base + offs_q[:, None] * stride_qn + offs_d[None, :],
                    mask=q_in[:, None] & d_in[None, :], other=0.0)
        k = tl.load(k_base + offs_k[:, None] * stride_kn + offs_d[None, :],
                    mask=k_in[:, None] & d_in[None, :], other=0.0)
        if not HALF:
            q = q.to(tl.float32)
            k = k.to(tl.float32)
        scores += _dot(q, tl.trans(k), HALF)
    return scores


@triton.jit
def _visible(mode: tl.constexpr, keep_local, offs_k, k_in, valid_base, kid_base, query_pos,
             query_id):
    """bool [BLOCK_Q, BLOCK_K]: which keys of the block each query sees (``TokenVisibility``)."""
    key_valid = tl.load(valid_base + offs_k, mask=k_in, other=0) != 0
    earlier = offs_k[None, :] < query_pos[:, None]
    if mode == 0:  # local: earlier in the segment
        visible = earlier
    else:
        key_id = tl.load(kid_base + offs_k, mask=k_in, other=-1)
        same = key_id[None, :] == query_id[:, None]
        if mode == 1:  # long: earlier in the same document
            visible = earlier & same
        else:  # ext: another segment, or (keep_local) earlier in the own one
            visible = (~same) | (earlier & (keep_local != 0))
    return visible & (key_valid & k_in)[None, :]


@triton.jit
def _forward_kernel(Q, K, LABELS, TARGETS, VALID, KEY_IDS, QUERY_POS, QUERY_IDS, SPANS,
                    LSE_ALL, LSE_POS, scale, keep_local, Nq, Nk, D,
                    stride_qg, stride_qn, stride_kg, stride_kn, num_q_blocks,
                    MODE: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
                    BLOCK_D: tl.constexpr, HALF: tl.constexpr):
    qb, g = tl.program_id(0), tl.program_id(1)
    offs_q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_in = offs_q < Nq
    query_pos = tl.load(QUERY_POS + g * Nq + offs_q, mask=q_in, other=0)
    query_id = tl.load(QUERY_IDS + g * Nq + offs_q, mask=q_in, other=-2)
    target = tl.load(TARGETS + g * Nq + offs_q, mask=q_in, other=-1)
    k_lo = tl.load(SPANS + (g * num_q_blocks + qb) * 2)
    k_hi = tl.load(SPANS + (g * num_q_blocks + qb) * 2 + 1)
    m_all = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
    m_pos = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
    l_all = tl.zeros((BLOCK_Q,), tl.float32)
    l_pos = tl.zeros((BLOCK_Q,), tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_in = offs_k < k_hi
        scores = _scores(Q + g * stride_qg, K + g * stride_kg, offs_q, offs_k, q_in, k_in, D,
                         stride_qn, stride_kn, BLOCK_Q, BLOCK_K, BLOCK_D, HALF) * scale
        visible = _visible(MODE, keep_local, offs_k, k_in, VALID + g * Nk, KEY_IDS + g * Nk,
                           query_pos, query_id)
        label = tl.load(LABELS + g * Nk + offs_k, mask=k_in, other=-3)
        positive = visible & (label[None, :] == target[:, None])
        # online log-sum-exp; a row that has seen nothing yet keeps max -inf (shift by 0 then)
        s_all = tl.where(visible, scores, float("-inf"))
        new_all = tl.maximum(m_all, tl.max(s_all, 1))
        shift_all = tl.where(new_all == float("-inf"), 0.0, new_all)
        l_all = l_all * tl.exp(m_all - shift_all) + tl.sum(tl.exp(s_all - shift_all[:, None]), 1)
        m_all = new_all
        s_pos = tl.where(positive, scores, float("-inf"))
        new_pos = tl.maximum(m_pos, tl.max(s_pos, 1))
        shift_pos = tl.where(new_pos == float("-inf"), 0.0, new_pos)
        l_pos = l_pos * tl.exp(m_pos - shift_pos) + tl.sum(tl.exp(s_pos - shift_pos[:, None]), 1)
        m_pos = new_pos
    lse_all = tl.where(l_all > 0, m_all + tl.log(l_all), float("-inf"))
    lse_pos = tl.where(l_pos > 0, m_pos + tl.log(l_pos), float("-inf"))
    tl.store(LSE_ALL + g * Nq + offs_q, lse_all, mask=q_in)
    tl.store(LSE_POS + g * Nq + offs_q, lse_pos, mask=q_in)


@triton.jit
def _backward_kernel(Q, K, LABELS, TARGETS, VALID, KEY_IDS, QUERY_POS, QUERY_IDS, SPANS,
                     LSE_ALL, LSE_POS, GRAD_ALL, GRAD_POS, DQ, DK, scale, keep_local, Nq, Nk, D,
                     stride_qg, stride_qn, stride_kg, stride_kn, num_q_blocks,
                     MODE: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
                     BLOCK_D: tl.constexpr, HALF: tl.constexpr, NEED_DQ: tl.constexpr,
                     NEED_DK: tl.constexpr):
    qb, g = tl.program_id(0), tl.program_id(1)
    offs_q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_in = offs_q < Nq
    query_pos = tl.load(QUERY_POS + g * Nq + offs_q, mask=q_in, other=0)
    query_id = tl.load(QUERY_IDS + g * Nq + offs_q, mask=q_in, other=-2)
    target = tl.load(TARGETS + g * Nq + offs_q, mask=q_in, other=-1)
    lse_all = tl.load(LSE_ALL + g * Nq + offs_q, mask=q_in, other=0.0)
    lse_pos = tl.load(LSE_POS + g * Nq + offs_q, mask=q_in, other=0.0)
    lse_all = tl.where(lse_all == float("-inf"), 0.0, lse_all)  # empty set: no weight anyway
    lse_pos = tl.where(lse_pos == float("-inf"), 0.0, lse_pos)
    grad_all = tl.load(GRAD_ALL + g * Nq + offs_q, mask=q_in, other=0.0)
    grad_pos = tl.load(GRAD_POS + g * Nq + offs_q, mask=q_in, other=0.0)
    k_lo = tl.load(SPANS + (g * num_q_blocks + qb) * 2)
    k_hi = tl.load(SPANS + (g * num_q_blocks + qb) * 2 + 1)
    q_base, k_base = Q + g * stride_qg, K + g * stride_kg
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_in = offs_k < k_hi
        scores = _scores(q_base, k_base, offs_q, offs_k, q_in, k_in, D, stride_qn, stride_kn,
                         BLOCK_Q, BLOCK_K, BLOCK_D, HALF) * scale
        visible = _visible(MODE, keep_local, offs_k, k_in, VALID + g * Nk, KEY_IDS + g * Nk,
                           query_pos, query_id)
        label = tl.load(LABELS + g * Nk + offs_k, mask=k_in, other=-3)
        positive = visible & (label[None, :] == target[:, None])
        p_all = tl.where(visible, tl.exp(scores - lse_all[:, None]), 0.0)
        p_pos = tl.where(positive, tl.exp(scores - lse_pos[:, None]), 0.0)
        d_scores = (grad_all[:, None] * p_all + grad_pos[:, None] * p_pos) * scale
        if HALF:  # as flash attention: dS in the inputs' type for the tensor cores
            d_scores = d_scores.to(K.dtype.element_ty)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            d_in = offs_d < D
            if NEED_DQ:
                k = tl.load(k_base + offs_k[:, None] * stride_kn + offs_d[None, :],
                            mask=k_in[:, None] & d_in[None, :], other=0.0)
                if not HALF:
                    k = k.to(tl.float32)
                dq_ptr = DQ + g * Nq * D + offs_q[:, None] * D + offs_d[None, :]
                dq_mask = q_in[:, None] & d_in[None, :]
                tl.store(dq_ptr, tl.load(dq_ptr, mask=dq_mask, other=0.0)
                         + _dot(d_scores, k, HALF), mask=dq_mask)
            if NEED_DK:
                q = tl.load(q_base + offs_q[:, None] * stride_qn + offs_d[None, :],
                            mask=q_in[:, None] & d_in[None, :], other=0.0)
                if not HALF:
                    q = q.to(tl.float32)
                tl.atomic_add(DK + g * Nk * D + offs_k[:, None] * D + offs_d[None, :],
                              _dot(tl.trans(d_scores), q, HALF),
                              mask=k_in[:, None] & d_in[None, :])


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _launch_args(queries, keys, spec: TokenVisibility):
    G, Nq, D = queries.shape
    num_q_blocks = triton.cdiv(Nq, BLOCK_Q)
    spans = spec.key_spans(BLOCK_Q).to(torch.int32).contiguous()
    # half-precision dots when both sides share a half type (and not bf16 in the interpreter)
    half = (queries.dtype == keys.dtype and queries.dtype in (torch.float16, torch.bfloat16)
            and not (_interpreted() and queries.dtype == torch.bfloat16))
    return (G, Nq, keys.shape[1], D, num_q_blocks, spans,
            dict(MODE=spec.mode, BLOCK_Q=BLOCK_Q, BLOCK_K=BLOCK_K, BLOCK_D=_block_d(D), HALF=half))


def _int32(x):
    return x.to(torch.int32).contiguous()


class _FusedMemoryLogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries, keys, key_labels, query_targets, spec, scale):
        queries, keys = queries.contiguous(), keys.contiguous()
        G, Nq, Nk, D, num_q_blocks, spans, meta = _launch_args(queries, keys, spec)
        ids = (_int32(key_labels), _int32(query_targets), _int32(spec.key_valid),
               _int32(spec.key_ids), _int32(spec.query_positions), _int32(spec.query_ids))
        lse_all = torch.empty(G, Nq, dtype=torch.float32, device=queries.device)
        lse_pos = torch.empty_like(lse_all)
        _forward_kernel[(num_q_blocks, G)](
            queries, keys, *ids, spans, lse_all, lse_pos, scale, int(spec.keep_local), Nq, Nk, D,
            queries.stride(0), queries.stride(1), keys.stride(0), keys.stride(1), num_q_blocks,
            **meta)
        ctx.save_for_backward(queries, keys, *ids, spans, lse_all, lse_pos)
        ctx.spec, ctx.scale = spec, scale
        return lse_all, lse_pos

    @staticmethod
    def backward(ctx, grad_all, grad_pos):
        queries, keys, *ids, spans, lse_all, lse_pos = ctx.saved_tensors
        G, Nq, Nk, D, num_q_blocks, _, meta = _launch_args(queries, keys, ctx.spec)
        need_dq, need_dk = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_all = torch.zeros_like(lse_all) if grad_all is None else grad_all.float().contiguous()
        grad_pos = torch.zeros_like(lse_pos) if grad_pos is None else grad_pos.float().contiguous()
        d_queries = torch.zeros(G, Nq, D, dtype=torch.float32, device=queries.device)
        d_keys = torch.zeros(G, Nk, D, dtype=torch.float32, device=keys.device) if need_dk \
            else d_queries  # an unused pointer
        _backward_kernel[(num_q_blocks, G)](
            queries, keys, *ids, spans, lse_all, lse_pos, grad_all, grad_pos, d_queries, d_keys,
            ctx.scale, int(ctx.spec.keep_local), Nq, Nk, D, queries.stride(0), queries.stride(1),
            keys.stride(0), keys.stride(1), num_q_blocks, NEED_DQ=need_dq, NEED_DK=need_dk, **meta)
        return (d_queries.to(queries.dtype) if need_dq else None,
                d_keys.to(keys.dtype) if need_dk else None, None, None, None, None)


def fused_memory_logsumexp(queries, keys, key_labels, query_targets, spec: TokenVisibility,
                           scale: float):
    """(lse_all, lse_pos) fp32 [G, Nq] of ``memory_logsumexp``, by the fused kernel."""
    return _FusedMemoryLogSumExp.apply(queries, keys, key_labels, query_targets, spec, scale)
