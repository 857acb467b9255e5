"""The long-memory rule (Eq. 2 + 3) against an explicit loop over segments and documents."""

import pytest
import torch

from naive import long_memory, naive_loss_over_memory
from trime.core.objective import batch_memory_logsumexp, trime_nll
from trime.core.visibility import LongMemory

PAD = 1
T = 5
# 6 segments of a corpus in stream order: doc 7 has segments 0-2, doc 8 segments 0-1, doc 9 one
SEGMENT_DOCS = [7, 7, 7, 8, 8, 9]
SEGMENT_ORDER = [0, 1, 2, 0, 1, 0]
# the batch holds them out of order, as a shuffled batch of groups would
BATCH_ORDER = [3, 4, 5, 0, 1, 2]


def _batch(V=6, d=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    B = len(SEGMENT_DOCS)
    scores = torch.randn(B, T, V, generator=gen, dtype=torch.float64)
    g = torch.randn(B, T, d, generator=gen, dtype=torch.float64)
    targets = torch.randint(2, 5, (B, T), generator=gen)
    targets[4, -2:] = PAD  # padding inside a document's run, before another document
    return scores, g, targets


def _long_loss(scores, g, targets, chunk, segment_docs=SEGMENT_DOCS):
    """TRIME loss with --memory long on the batch in BATCH_ORDER (segments shuffled)."""
    idx = torch.tensor(BATCH_ORDER)
    scores, g, targets = scores[idx], g[idx], targets[idx]
    doc_ids = torch.tensor(segment_docs)[idx][:, None].expand(-1, T)
    segment_starts = idx * T  # corpus offset of each segment
    valid = targets != PAD
    lse_all, lse_pos = batch_memory_logsumexp("long", g, targets, targets, valid, chunk,
                                              doc_ids=doc_ids, segment_starts=segment_starts)
    target_score = scores.gather(-1, targets[..., None]).squeeze(-1).float()
    nll = trime_nll(target_score, scores.float().logsumexp(-1), lse_all, lse_pos)
    return nll[valid].sum()


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_long_memory_loss_and_grads_match_naive(chunk):
    scores, g, targets = _batch()
    memory = long_memory(SEGMENT_DOCS, SEGMENT_ORDER, (targets != PAD).tolist())
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
    assert {s2 for s2, _ in memory[2][0]} == {0, 1}  # doc 7's third segment sees its first two
    assert memory[5][0] == []  # first segment of doc 9: nothing, although doc 8 precedes it
    assert (4, 3) not in memory[4][4] and (4, 2) in memory[4][4]  # pads are never memory


def test_long_memory_with_one_document_per_segment_is_local():
    # each segment its own document: the long rule must reduce to local memory
    scores, g, targets = _batch()
    local = [[[(s, j) for j in range(t) if targets[s, j] != PAD] for t in range(T)]
             for s in range(len(SEGMENT_DOCS))]
    local_ref = naive_loss_over_memory(scores, g, targets, local, PAD)
    as_local = _long_loss(scores, g, targets, chunk=4, segment_docs=list(range(6)))
    assert torch.allclose(as_local.double(), local_ref, rtol=1e-5)
    assert not torch.allclose(_long_loss(scores, g, targets, chunk=4).double(), local_ref, rtol=1e-3)


def test_key_range_starts_at_the_document_of_the_chunk():
    doc_ids = torch.tensor([[7, 7, 7, 8, 8, 9, 9]])
    rule = LongMemory(torch.ones(1, 7, dtype=torch.bool), doc_ids)
    assert rule.key_range(0, 2) == (0, 1)
    assert rule.key_range(4, 6) == (3, 5)
    assert rule.key_range(6, 7) == (5, 6)


def test_bad_input():
    with pytest.raises(ValueError, match="must have the same shape"):
        LongMemory(torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="corpus offset and document ids"):
        batch_memory_logsumexp("long", torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long),
                               torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool))


@pytest.mark.parametrize("split", [3, 4])
def test_each_worker_with_the_global_memory_sums_to_the_global_loss(split):
    """Two "workers" hold rows [:split] and [split:] of the batch; memory = both (gathered by
    a differentiable concatenation, padded to equal sizes like the all-gather): the summed loss
    and the gradients equal those of one batch holding all the rows."""
    from trime.core.distributed import NO_SEGMENT
    from trime.core.objective import BatchMemory

    scores, g, targets = _batch()
    idx = torch.tensor(BATCH_ORDER)
    s_ref, g_ref = scores.clone().requires_grad_(), g.clone().requires_grad_()
    reference = _long_loss(s_ref, g_ref, targets, chunk=4)
    reference.backward()

    scores, targets = scores[idx], targets[idx]
    g_in = g.clone().requires_grad_()
    g_all = g_in[idx]
    docs = torch.tensor(SEGMENT_DOCS)[idx][:, None].expand(-1, T)
    starts = idx * T
    valid = targets != PAD
    parts = [slice(0, split), slice(split, len(idx))]
    rows = max(p.stop - p.start for p in parts)

    def pad_rows(x, value):
        return torch.cat([x, x.new_full((rows - x.shape[0], *x.shape[1:]), value)])

    memory = BatchMemory(
        keys=torch.cat([pad_rows(g_all[p], 0.0) for p in parts]),
        labels=torch.cat([pad_rows(targets[p], PAD) for p in parts]),
        key_valid=torch.cat([pad_rows(valid[p], False) for p in parts]),
        doc_ids=torch.cat([pad_rows(docs[p], -1) for p in parts]),
        segment_starts=torch.cat([pad_rows(starts[p], NO_SEGMENT) for p in parts]),
        own_rows=None)
    total = 0
    for w, p in enumerate(parts):
        memory.own_rows = w * rows + torch.arange(p.stop - p.start)
        lse_all, lse_pos = batch_memory_logsumexp("long", g_all[p], targets[p], targets[p], valid[p],
                                                  chunk_size=4, memory=memory)
        target_score = scores[p].gather(-1, targets[p][..., None]).squeeze(-1).float()
        nll = trime_nll(target_score, scores[p].float().logsumexp(-1), lse_all, lse_pos)
        total = total + nll[valid[p]].sum()
    total.backward()
    assert torch.allclose(total.double(), reference.double(), rtol=1e-6)
    assert torch.allclose(g_in.grad, g_ref.grad, rtol=1e-4, atol=1e-6)
    assert g_in.grad.abs().sum() > 0


@pytest.mark.parametrize("top_k", [None, 1, 3])
@pytest.mark.parametrize("keep_local", [True, False])
@pytest.mark.parametrize("chunk", [1, 4, 100])
def test_ext_rule_matches_naive(keep_local, chunk, top_k):
    """ExtMemory (Eq. 4 in training): every token of the other segments + (unless dropped) the
    earlier tokens of the own segment, against explicit lists; losses and gradients. With
    ``top_k`` (the authors' MT --topk-mem; keep_local=False is MT's memory, §5.4) each query
    keeps its k most similar keys, sorted explicitly in the reference."""
    from naive import top_k_memory
    from trime.core.memory_lse import memory_logsumexp
    from trime.core.visibility import ExtMemory

    scores, g, targets = _batch()
    B = targets.shape[0]
    valid = targets != PAD
    memory = [[[(s2, j) for s2 in range(B) for j in range(T)
                if valid[s2, j] and (s2 != s or (keep_local and j < t))] for t in range(T)]
              for s in range(B)]
    if top_k is not None:
        whole = naive_loss_over_memory(scores, g, targets, memory, PAD)
        memory = top_k_memory(g, memory, top_k)
        assert not torch.allclose(whole, naive_loss_over_memory(scores, g, targets, memory, PAD))
    s1, g1 = scores.clone().requires_grad_(), g.clone().requires_grad_()
    s2, g2 = scores.clone().requires_grad_(), g.clone().requires_grad_()
    rule = ExtMemory(valid.reshape(1, -1), torch.arange(B)[:, None].expand(B, T).reshape(1, -1),
                     keep_local=keep_local)
    flat_g = g1.reshape(1, B * T, -1)
    lse_all, lse_pos = memory_logsumexp(flat_g, flat_g, targets.reshape(1, -1), targets.reshape(1, -1),
                                        rule, chunk_size=chunk, top_k=top_k)
    target_score = s1.gather(-1, targets[..., None]).squeeze(-1).float()
    nll = trime_nll(target_score, s1.float().logsumexp(-1), lse_all.view(B, T), lse_pos.view(B, T))
    ours = nll[valid].sum()
    ref = naive_loss_over_memory(s2, g2, targets, memory, PAD)
    assert torch.allclose(ours.double(), ref, rtol=1e-5), (ours, ref)
    ours.backward()
    ref.backward()
    assert torch.allclose(g1.grad, g2.grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(s1.grad, s2.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("keep_local", [True, False])
def test_ext_through_batch_memory_and_split_workers(keep_local):
    """batch_memory_logsumexp("ext") on a shuffled batch, and two "workers" with the global batch
    as memory, both equal the direct ExtMemory computation (loss and gradients)."""
    from trime.core.distributed import NO_SEGMENT
    from trime.core.memory_lse import memory_logsumexp
    from trime.core.objective import BatchMemory
    from trime.core.visibility import ExtMemory

    scores, g, targets = _batch()
    B = targets.shape[0]
    valid = targets != PAD

    def loss_of(lse_all, lse_pos, rows):
        target_score = scores[rows].gather(-1, targets[rows][..., None]).squeeze(-1).float()
        nll = trime_nll(target_score, scores[rows].float().logsumexp(-1), lse_all, lse_pos)
        return nll[valid[rows]].sum()

    g_ref = g.clone().requires_grad_()
    rule = ExtMemory(valid.reshape(1, -1), torch.arange(B)[:, None].expand(B, T).reshape(1, -1),
                     keep_local=keep_local)
    flat = g_ref.reshape(1, B * T, -1)
    lse = memory_logsumexp(flat, flat, targets.reshape(1, -1), targets.reshape(1, -1), rule, chunk_size=4)
    reference = loss_of(lse[0].view(B, T), lse[1].view(B, T), slice(None))
    reference.backward()

    g_batch = g.clone().requires_grad_()
    lse_all, lse_pos = batch_memory_logsumexp("ext", g_batch, targets, targets, valid, chunk_size=3,
                                              segment_starts=torch.tensor(BATCH_ORDER),
                                              keep_local=keep_local)
    batch_loss = loss_of(lse_all, lse_pos, slice(None))
    batch_loss.backward()
    assert torch.allclose(batch_loss.double(), reference.double(), rtol=1e-6)
    assert torch.allclose(g_batch.grad, g_ref.grad, rtol=1e-4, atol=1e-6)

    g_split = g.clone().requires_grad_()
    parts, rows = [slice(0, 4), slice(4, B)], 4

    def pad_rows(x, value):
        return torch.cat([x, x.new_full((rows - x.shape[0], *x.shape[1:]), value)])

    memory = BatchMemory(torch.cat([pad_rows(g_split[p], 0.0) for p in parts]),
                         torch.cat([pad_rows(targets[p], PAD) for p in parts]),
                         torch.cat([pad_rows(valid[p], False) for p in parts]),
                         torch.cat([pad_rows(torch.zeros_like(targets[p]), -1) for p in parts]),
                         torch.cat([pad_rows(torch.arange(B)[p], NO_SEGMENT) for p in parts]), None)
    total = 0
    for w, p in enumerate(parts):
        memory.own_rows = w * rows + torch.arange(p.stop - p.start)
        lse_all, lse_pos = batch_memory_logsumexp("ext", g_split[p], targets[p], targets[p], valid[p],
                                                  chunk_size=4, memory=memory, keep_local=keep_local)
        total = total + loss_of(lse_all, lse_pos, p)
    total.backward()
    assert torch.allclose(total.double(), reference.double(), rtol=1e-6)
    assert torch.allclose(g_split.grad, g_ref.grad, rtol=1e-4, atol=1e-6)
