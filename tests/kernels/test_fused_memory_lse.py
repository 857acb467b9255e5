"""The fused Triton memory kernel equals the chunked op (the reference, itself tested against the
naive Eq. 5 sums in tests/core): every visibility rule, with and without positives, fp32 and bf16
inputs, forward and backward, on the block-skipping edge cases. Runs in Triton's CPU interpreter."""

import os

import pytest
import torch

from trime.core.memory_lse import memory_logsumexp
from trime.core.visibility import ExtMemory, LocalMemory, LongMemory
from trime.kernels.token_visibility import TokenVisibility

os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernel module is first imported
triton = pytest.importorskip("triton")


def _rules(G, N, gen):
    """(name, rule, number of queries) over a [G, N] key layout with pads and documents."""
    valid = torch.rand(G, N, generator=gen) > 0.15
    docs = torch.repeat_interleave(torch.arange(4), torch.tensor([N // 3, 5, N // 3, N - 2 * (N // 3) - 5]))
    segments = torch.arange(N) // 23  # 23-token segments: blocks of 64 span several
    some = torch.sort(torch.randperm(N, generator=gen)[:N // 2]).values  # one worker's queries
    return [
        ("local", LocalMemory(valid), N),
        ("long", LongMemory(valid[:1], docs[None]), N),
        ("long, some queries", LongMemory(valid[:1], docs[None], some), len(some)),
        ("ext", ExtMemory(valid[:1], segments[None]), N),
        ("ext without local", ExtMemory(valid[:1], segments[None], keep_local=False), N),
        ("ext, some queries", ExtMemory(valid[:1], segments[None], some, keep_local=False), len(some)),
    ]


def _both(rule, queries, keys, labels, targets, temperature=2.0):
    """{kernel: (lse_all, lse_pos, d_queries, d_keys)} under the same upstream gradients."""
    gen = torch.Generator().manual_seed(7)
    upstream = torch.randn(2, *targets.shape, generator=gen)
    out = {}
    for kernel in ("chunked", "fused"):
        q = queries.detach().clone().requires_grad_()
        k = keys.detach().clone().requires_grad_()
        lse_all, lse_pos = memory_logsumexp(q, k, labels, targets, rule, temperature, 16,
                                            kernel=kernel)
        total = sum((torch.where(torch.isfinite(lse), lse, 0) * w).sum()
                    for lse, w in zip((lse_all, lse_pos), upstream))
        d_q, d_k = torch.autograd.grad(total, (q, k), allow_unused=True)
        out[kernel] = (lse_all, lse_pos, d_q, d_k)
    return out


def _assert_close(out, atol, rtol):
    (a_all, a_pos, a_dq, a_dk), (b_all, b_pos, b_dq, b_dk) = out["chunked"], out["fused"]
    for ref, got in ((a_all, b_all), (a_pos, b_pos)):
        assert torch.equal(torch.isinf(ref), torch.isinf(got))  # the same empty sets
        torch.testing.assert_close(got[torch.isfinite(got)], ref[torch.isfinite(ref)],
                                   atol=atol, rtol=rtol)
    for ref, got in ((a_dq, b_dq), (a_dk, b_dk)):
        torch.testing.assert_close(got.float(), ref.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("positives", [True, False])
@pytest.mark.parametrize("rule_index", range(6))
def test_fused_equals_chunked_for_every_rule(rule_index, positives):
    gen = torch.Generator().manual_seed(rule_index)
    G, N, D = 2, 90, 24  # 90 = a full and a partial block of 64; D pads to 32 in the kernel
    name, rule, num_queries = _rules(G, N, gen)[rule_index]
    groups = rule.key_valid.shape[0]
    keys = torch.randn(groups, N, D, generator=gen)
    labels = torch.randint(0, 4, (groups, N), generator=gen)
    if isinstance(rule, LocalMemory):
        queries, targets = keys, labels  # queries are the keys, as in training
    else:
        queries = torch.randn(groups, num_queries, D, generator=gen)
        targets = torch.randint(0, 4, (groups, num_queries), generator=gen)
    if not positives:
        targets = targets + 10  # no key has the target's label
    out = _both(rule, queries, keys, labels, targets)
    assert torch.isfinite(out["fused"][0]).any(), name
    assert torch.isfinite(out["fused"][1]).any() == positives, name
    _assert_close(out, atol=2e-5, rtol=1e-5)


def test_bf16_inputs_and_a_feature_dimension_over_one_block():
    gen = torch.Generator().manual_seed(3)
    N, D = 80, 150  # the kernel walks d in blocks of 128
    valid = torch.rand(1, N, generator=gen) > 0.1
    rule = ExtMemory(valid, (torch.arange(N) // 20)[None])
    queries = torch.randn(1, N, D, generator=gen)
    labels = torch.randint(0, 3, (1, N), generator=gen)
    _assert_close(_both(rule, queries, queries, labels, labels), atol=2e-5, rtol=1e-5)
    half = queries.bfloat16()
    out = _both(rule, half, half, labels, labels)  # both read the same bf16 values
    _assert_close(out, atol=2e-2, rtol=1e-2)
    assert out["fused"][2].dtype == torch.bfloat16


def test_blocks_that_see_nothing():
    gen = torch.Generator().manual_seed(4)
    D = 16
    # one position: the only query block has an empty key span
    one = torch.randn(1, 1, D, generator=gen, requires_grad=True)
    lse_all, lse_pos = memory_logsumexp(one, one, torch.zeros(1, 1), torch.zeros(1, 1),
                                        LocalMemory(torch.ones(1, 1, dtype=torch.bool)),
                                        kernel="fused")
    assert torch.isinf(lse_all).all() and torch.isinf(lse_pos).all()
    # a group whose keys are all pads: a span to walk, nothing visible, no gradient
    valid = torch.ones(2, 70, dtype=torch.bool)
    valid[0] = False
    keys = torch.randn(2, 70, D, generator=gen)
    labels = torch.randint(0, 3, (2, 70), generator=gen)
    out = _both(LocalMemory(valid), keys, keys, labels, labels)
    assert torch.isinf(out["fused"][0][0]).all() and out["fused"][2][0].abs().sum() == 0
    _assert_close(out, atol=2e-5, rtol=1e-5)
    # long memory: queries at their document's start see nothing of earlier documents
    docs = torch.repeat_interleave(torch.arange(3), torch.tensor([64, 64, 10]))[None]
    starts = torch.tensor([0, 64, 128])
    rule = LongMemory(torch.ones(1, 138, dtype=torch.bool), docs, starts)
    queries = torch.randn(1, 3, D, generator=gen)
    keys = torch.randn(1, 138, D, generator=gen)
    lse_all, _ = memory_logsumexp(queries, keys, labels[:1, :1].expand(1, 138), labels[:1, :3],
                                  rule, kernel="fused")
    assert torch.isinf(lse_all).all()


def test_key_spans_hold_every_visible_key():
    gen = torch.Generator().manual_seed(5)
    for name, rule, num_queries in _rules(2, 150, gen):
        tokens = rule.token_visibility(num_queries)
        assert isinstance(tokens, TokenVisibility), name
        spans = tokens.key_spans(16)
        Nk = rule.key_valid.shape[1]
        visible = rule.visible(0, num_queries, 0, Nk).expand(rule.key_valid.shape[0], -1, -1)
        for block in range(spans.shape[1]):
            seen = visible[:, block * 16:(block + 1) * 16].any(1)  # [G, Nk]
            for g in range(seen.shape[0]):
                lo, hi = spans[g, block].tolist()
                where = seen[g].nonzero().flatten()
                assert lo <= hi and ((where >= lo) & (where < hi)).all(), (name, block)
        if name == "local":  # block b of queries sees keys before its last query only
            assert spans[0, :, 1].tolist() == [15, 31, 47, 63, 79, 95, 111, 127, 143, 149]
        if name == "long":  # and from its first query's document start on
            assert spans[0, 4].tolist() == [55, 79]  # queries 64..79: documents 2 (from 55) and 3


def test_the_dispatcher_says_why_it_refuses(monkeypatch):
    from trime.core.visibility import WindowAndFifoMemory
    from trime.kernels.dispatch import choose

    q = torch.randn(1, 8, 16)
    rule = LocalMemory(torch.ones(1, 8, dtype=torch.bool))
    assert choose("auto", q, q, rule, None)[0] == "chunked"  # auto is chunked on CPU
    assert choose("fused", q, q, rule, None)[0] == "fused"  # the interpreter runs it
    with pytest.raises(ValueError, match="top-k memory .* chunked op only.*--memory-kernel chunked"):
        choose("fused", q, q, rule, 8)
    with pytest.raises(ValueError, match="unknown memory kernel 'flash'"):
        choose("flash", q, q, rule, None)
    window = WindowAndFifoMemory.__new__(WindowAndFifoMemory)
    with pytest.raises(ValueError, match="window \\+ FIFO memory is scored by the chunked op"):
        choose("fused", q, q, window, None)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="tensors are on cpu: the kernel runs on CUDA"):
        choose("fused", q, q, rule, None)
