"""The pure loss functions against the naive Eq. 5 reference (no fairseq needed)."""

import pytest
import torch

from naive import eq6_distribution, local_memory, naive_trime_loss
from trime.core.memory_lse import memory_logsumexp
from trime.core.mixtures import memory_log_probs
from trime.core.objective import trime_nll
from trime.core.visibility import LocalMemory, build_visibility

PAD = 1


def _batch(B=3, T=9, V=7, d=5, seed=0, pad_tail=True, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, T, V, generator=gen, dtype=dtype)
    g = torch.randn(B, T, d, generator=gen, dtype=dtype)
    # small label alphabet so that memory positives are frequent
    targets = torch.randint(2, 5, (B, T), generator=gen)
    if pad_tail:
        targets[-1, -3:] = PAD
    return scores, g, targets


def _trime_loss(scores, g, targets, chunk, temperature=1.0):
    valid = targets != PAD
    vis = LocalMemory(valid)
    lse_all, lse_pos = memory_logsumexp(g, g, targets, targets, vis, temperature, chunk)
    target_score = scores.gather(-1, targets[..., None]).squeeze(-1).float()
    nll = trime_nll(target_score, scores.float().logsumexp(-1), lse_all, lse_pos)
    return nll[valid].sum()


@pytest.mark.parametrize("chunk", [1, 2, 4, 100])
def test_loss_and_grads_match_naive(chunk):
    scores, g, targets = _batch()
    s1, g1 = scores.clone().requires_grad_(), g.clone().requires_grad_()
    s2, g2 = scores.clone().requires_grad_(), g.clone().requires_grad_()
    ours = _trime_loss(s1, g1, targets, chunk)
    ref = naive_trime_loss(s2, g2, targets, PAD)
    assert torch.allclose(ours.double(), ref, rtol=1e-5), (ours, ref)
    ours.backward()
    ref.backward()
    assert torch.allclose(s1.grad, s2.grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(g1.grad, g2.grad, rtol=1e-4, atol=1e-6)
    assert g1.grad.abs().sum() > 0  # gradient reaches queries and keys


def test_no_positive_and_no_memory_are_finite():
    # every target distinct: no positives anywhere; position 0 has no memory at all
    B, T, V, d = 2, 6, 20, 4
    scores = torch.randn(B, T, V, dtype=torch.float64, requires_grad=True)
    g = torch.randn(B, T, d, dtype=torch.float64, requires_grad=True)
    targets = torch.arange(2, 2 + B * T).view(B, T) % V
    loss = _trime_loss(scores, g, targets, chunk=3)
    ref = naive_trime_loss(scores, g, targets, PAD)
    assert torch.isfinite(loss) and torch.allclose(loss.double(), ref, rtol=1e-5)
    loss.backward()
    assert torch.isfinite(g.grad).all() and torch.isfinite(scores.grad).all()


def test_memory_pushes_loss_when_positive_is_similar():
    # positives with identical keys lower the loss below the vocab-only NLL (3·log 5)
    scores = torch.zeros(1, 3, 5, dtype=torch.float64)
    g = torch.ones(1, 3, 4, dtype=torch.float64) * 3
    targets = torch.tensor([[2, 2, 2]])
    loss = _trime_loss(scores, g, targets, chunk=2)
    vocab_only = 3 * torch.log(torch.tensor(5.0, dtype=torch.float64))
    assert loss < vocab_only


def test_temperature_and_full_distribution_match_naive():
    scores, g, targets = _batch(B=2, T=6, V=6, d=3, seed=3)
    valid = targets != PAD
    for tau in (0.5, 1.7):
        logp = memory_log_probs(scores, g, g, targets, LocalMemory(valid), tau, chunk_size=4)
        assert torch.allclose(logp.exp().sum(-1), torch.ones(2, 6, dtype=torch.float32), atol=1e-5)
        for b in range(2):
            memory = local_memory(6, valid[b].tolist())
            for t in range(6):
                p = eq6_distribution(scores[b, t], g[b, t], g[b], targets[b], memory[t], tau)
                assert torch.allclose(logp[b, t].double(), p.log(), atol=1e-5)


def test_full_distribution_is_finite_for_very_negative_scores():
    scores = torch.full((1, 4, 5), -200.0)
    scores[..., 0] = 50.0
    g = torch.randn(1, 4, 3)
    targets = torch.tensor([[3, 3, 3, 3]])
    logp = memory_log_probs(scores, g, g, targets, LocalMemory(targets != PAD))
    assert torch.isfinite(logp).all()


def test_bf16_inputs_accumulate_in_fp32():
    scores, g, targets = _batch(B=2, T=16, V=9, d=8, seed=5, dtype=torch.float32)
    ref = naive_trime_loss(scores, g, targets, PAD)
    g16 = g.to(torch.bfloat16).requires_grad_()
    ours = _trime_loss(scores.to(torch.bfloat16), g16, targets, chunk=5)
    ours.backward()
    assert ours.dtype == torch.float32 and g16.grad.dtype == torch.bfloat16
    # bf16 inputs carry ~3 significant digits: documented tolerance 1e-2 relative
    assert torch.allclose(ours.double(), ref, rtol=1e-2)


def test_rules_are_checked():
    from trime.core.visibility import check_memory_rule

    for rule in ("local", "long", "ext"):
        check_memory_rule(rule)
    with pytest.raises(ValueError, match="document id"):
        build_visibility("long", torch.ones(1, 2, dtype=torch.bool))


def test_unknown_rule_raises():
    with pytest.raises(ValueError, match="choose one of local, long, ext"):
        build_visibility("global", torch.ones(1, 2, dtype=torch.bool))


def test_softmax_target_log_prob_values_and_gradcheck():
    from trime.core.softmax import softmax_target_log_prob

    logits = torch.randn(3, 4, 7, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7, (3, 4))
    lp, log_z = softmax_target_log_prob(logits, targets)
    assert torch.allclose(log_z.double(), logits.logsumexp(-1))
    assert torch.allclose(lp.double(), logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0])
    # the function computes in fp32; gradcheck its math in float64 through a wrapper
    weights = torch.randn(3, 4, dtype=torch.float64)
    (lp * weights + log_z * weights.flip(0)).sum().backward()
    ref_logits = logits.detach().clone().requires_grad_()
    ref_lp = ref_logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    (ref_lp * weights + ref_logits.logsumexp(-1) * weights.flip(0)).sum().backward()
    assert torch.allclose(logits.grad, ref_logits.grad, atol=1e-6)


def test_top_k_must_be_positive():
    g = torch.randn(1, 4, 3)
    labels = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        memory_logsumexp(g, g, labels, labels, LocalMemory(labels > 0), top_k=0)


@pytest.mark.parametrize("rule", ["local", "long"])
def test_causal_rules_score_diagonal_chunks_and_match_explicit_sums(rule):
    """Segments longer than CAUSAL_CHUNK: the chunked op scores about the lower triangle only
    (not the whole T x T square that one chunk of --memory-chunk-size would), and its values and
    gradients still equal explicit sums over the visible keys."""
    from trime.core.memory_lse import _memory_chunks
    from trime.core.visibility import CAUSAL_CHUNK

    T = 2 * CAUSAL_CHUNK + 44
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(1, T, 6, generator=gen, dtype=torch.float64)
    labels = torch.randint(2, 6, (1, T), generator=gen)
    valid = torch.rand(1, T, generator=gen) > 0.1
    docs = (torch.arange(T) >= T // 3).long()[None]  # long: two documents
    vis = build_visibility(rule, valid, docs if rule == "long" else None)
    scanned = sum((q1 - q0) * (k1 - k0) for q0, q1, k0, k1, *_ in
                  _memory_chunks(g, g, labels, labels, vis, 1.0, 1024))
    assert scanned <= 0.72 * T * T, scanned  # one 1,024-query chunk would scan T x (T - 1)

    g1, g2 = g.clone().requires_grad_(), g.clone().requires_grad_()
    lse_all, lse_pos = memory_logsumexp(g1, g1, labels, labels, vis, 1.0, 1024)
    pos = torch.arange(T)
    visible = (pos[None, :] < pos[:, None]) & valid[0][None, :]
    if rule == "long":
        visible &= docs[0][None, :] == docs[0][:, None]
    scores = g2[0] @ g2[0].t() / 6 ** 0.5
    ref_all = scores.masked_fill(~visible, float("-inf")).logsumexp(-1)
    ref_pos = scores.masked_fill(~(visible & (labels[0][None, :] == labels[0][:, None])),
                                 float("-inf")).logsumexp(-1)
    for ours, ref in ((lse_all[0], ref_all), (lse_pos[0], ref_pos)):
        assert torch.equal(torch.isfinite(ours), torch.isfinite(ref))
        assert torch.allclose(ours[torch.isfinite(ref)].double(), ref[torch.isfinite(ref)], rtol=1e-5)
    weights = torch.linspace(0.5, 1.5, T, dtype=torch.float64)
    total = lambda a, p: (weights * (torch.where(torch.isfinite(a), a, 0) +
                                     torch.where(torch.isfinite(p), p, 0))).sum()
    total(lse_all[0].double(), lse_pos[0].double()).backward()
    total(ref_all, ref_pos).backward()
    assert torch.allclose(g1.grad, g2.grad, rtol=1e-4, atol=1e-6)
