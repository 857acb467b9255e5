"""The long-memory rule (Eq. 2 + 3) against an explicit loop over segments and documents."""

import pytest
import torch

from naive import long_memory, naive_loss_over_memory
from trime.loss import memory_logsumexp, trime_nll
from trime.memory import LongMemory, group_consecutive

PAD = 1
# 6 segments in batch order, groups of m = 3: doc 7 segments 0-2; doc 8 segments 0-1, then
# a leftover segment of doc 9 sharing the second group
SEGMENT_DOCS = [7, 7, 7, 8, 8, 9]
SEGMENT_ORDER = [0, 1, 2, 0, 1, 0]
M = 3


def _batch(T=5, V=6, d=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    B = len(SEGMENT_DOCS)
    scores = torch.randn(B, T, V, generator=gen, dtype=torch.float64)
    g = torch.randn(B, T, d, generator=gen, dtype=torch.float64)
    targets = torch.randint(2, 5, (B, T), generator=gen)
    targets[4, -2:] = PAD  # padding inside a group, before another document's segment
    return scores, g, targets


def _long_loss(scores, g, targets, chunk):
    T = targets.shape[1]
    doc_ids = torch.tensor(SEGMENT_DOCS)[:, None].expand(-1, T)
    g_grouped, t_grouped = group_consecutive(g, M), group_consecutive(targets, M)
    valid = t_grouped != PAD
    rule = LongMemory(valid, group_consecutive(doc_ids, M))
    lse_all, lse_pos = memory_logsumexp(g_grouped, g_grouped, t_grouped, t_grouped, rule,
                                        chunk_size=chunk)
    s_grouped = group_consecutive(scores, M)
    target_score = s_grouped.gather(-1, t_grouped[..., None]).squeeze(-1).float()
    nll = trime_nll(target_score, s_grouped.float().logsumexp(-1), lse_all, lse_pos)
    return nll[valid].sum()


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_long_memory_loss_and_grads_match_naive(chunk):
    scores, g, targets = _batch()
    valid_keys = (targets != PAD).tolist()
    memory = long_memory(SEGMENT_DOCS, SEGMENT_ORDER, valid_keys)
    s1, g1 = scores.clone().requires_grad_(), g.clone().requires_grad_()
    s2, g2 = scores.clone().requires_grad_(), g.clone().requires_grad_()
    ours = _long_loss(s1, g1, targets, chunk)
    ref = naive_loss_over_memory(s2, g2, targets, memory, PAD)
    assert torch.allclose(ours.double(), ref, rtol=1e-5), (ours, ref)
    ours.backward()
    ref.backward()
    assert torch.allclose(s1.grad, s2.grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(g1.grad, g2.grad, rtol=1e-4, atol=1e-6)
    # gradient reaches the keys of an earlier segment (no stop-gradient, unlike Transformer-XL)
    assert g1.grad[0].abs().sum() > 0


def test_naive_long_memory_sees_earlier_segments_only_of_the_same_document():
    _, _, targets = _batch()
    memory = long_memory(SEGMENT_DOCS, SEGMENT_ORDER, (targets != PAD).tolist())
    seen = {s2 for s2, _ in memory[2][0]}  # first token of doc 7's third segment
    assert seen == {0, 1}
    assert memory[5][0] == []  # first segment of doc 9: nothing, although doc 8 precedes it
    assert (4, 3) not in memory[4][4] and (4, 2) in memory[4][4]  # pads are never memory


def test_long_memory_differs_from_local():
    # the same batch scored with one-document-per-segment ids is the local rule: it must differ
    scores, g, targets = _batch()
    local = [[[(s, j) for j in range(t) if targets[s, j] != PAD] for t in range(targets.shape[1])]
             for s in range(targets.shape[0])]
    long_loss = _long_loss(scores, g, targets, chunk=4)
    local_ref = naive_loss_over_memory(scores, g, targets, local, PAD)
    assert not torch.allclose(long_loss.double(), local_ref, rtol=1e-3)


def test_group_consecutive_needs_whole_groups():
    with pytest.raises(ValueError, match="multiple of --consecutive-segments"):
        group_consecutive(torch.zeros(5, 4), 3)
    with pytest.raises(ValueError, match="must have the same shape"):
        LongMemory(torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 4))
