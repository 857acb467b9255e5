"""trime.core.objective.TrimeObjective, the one objective every frontend calls: loss and
gradients equal the naive Eq. 5 (tests/naive.py, explicit sums over the vocabulary) for each
memory rule, with label smoothing, top-k, detached keys and the CE warm-up."""

import numpy as np
import pytest
import torch

from naive import long_memory, naive_loss_over_memory, top_k_memory
from trime.core.objective import TrimeObjective, VocabTerms, keeps_own_segment

PAD = 0


def _batch(seed=0, B=3, T=5, V=7, d=4):
    generator = torch.Generator().manual_seed(seed)
    vocab_scores = torch.randn(B, T, V, generator=generator, dtype=torch.float64, requires_grad=True)
    g = torch.randn(B, T, d, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(1, V, (B, T), generator=generator)
    targets[0, -1] = PAD  # a padded position: neither scored nor memory
    return vocab_scores, g, targets


def _vocab_terms(vocab_scores, targets, smoothing=False):
    log_partition = torch.logsumexp(vocab_scores, -1)
    target_score = vocab_scores.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    smooth = None
    if smoothing:  # Σ_v -log p(v) = V log Z - Σ_v s_v
        smooth = vocab_scores.shape[-1] * log_partition - vocab_scores.sum(-1)
    return VocabTerms(target_score, log_partition, smooth, vocab_scores.shape[-1])


def _memories(targets, rule, keep_local=True):
    """memory[s][t] as (segment, position) lists for a batch whose segments are 0, 1, 2 of one
    document (long) or unrelated segments (ext)."""
    B, T = targets.shape
    valid = (targets != PAD).tolist()
    if rule == "local":
        return [[[(s, j) for j in range(t) if valid[s][j]] for t in range(T)] for s in range(B)]
    if rule == "long":
        return long_memory([0] * B, list(range(B)), valid)
    return [[[(s2, j) for s2 in range(B) for j in range(T) if valid[s2][j]
              and (s2 != s or (keep_local and j < t))] for t in range(T)] for s in range(B)]


def _grads(total, *tensors):
    return torch.autograd.grad(total, tensors)


@pytest.mark.parametrize("rule, options, keep_local", [
    ("local", {}, True),
    ("long", {}, True),
    ("ext", {}, True),
    ("ext", {}, False),
    ("ext", {"temperature": 2.0, "top_k": 3}, False),
    ("long", {"detach_keys": True}, True),
    ("ext", {"label_smoothing": 0.1}, False),
])
def test_objective_equals_naive_eq5_with_gradients(rule, options, keep_local):
    vocab_scores, g, targets = _batch()
    B, T = targets.shape
    key_valid = targets != PAD
    objective = TrimeObjective(rule, chunk_size=2, kernel="chunked", **options)
    smoothing = options.get("label_smoothing", 0.0)
    terms = objective(_vocab_terms(vocab_scores, targets, smoothing > 0), g, targets, targets,
                      key_valid, doc_ids=torch.zeros_like(targets),
                      segment_starts=torch.arange(B) * T, keep_local=keep_local)
    ours = terms.loss[key_valid].sum()
    memory = _memories(targets, rule, keep_local)
    if options.get("top_k"):
        memory = top_k_memory(g, memory, options["top_k"])
    naive = naive_loss_over_memory(vocab_scores, g, targets, memory, PAD,
                                   detach_keys=options.get("detach_keys", False),
                                   temperature=options.get("temperature", 1.0),
                                   label_smoothing=smoothing)
    assert torch.allclose(ours, naive, rtol=1e-6)  # the memory sums are fp32
    for mine, reference in zip(_grads(ours, vocab_scores, g), _grads(naive, vocab_scores, g)):
        assert torch.allclose(mine, reference, rtol=1e-4, atol=1e-6)
    # lm_nll is the vocabulary's alone, whatever the memory
    lm = -torch.log_softmax(vocab_scores, -1).gather(-1, targets[..., None])[..., 0]
    assert torch.allclose(terms.lm_nll, lm)


def test_warm_up_and_rule_none_are_the_plain_lm_loss():
    """CE warm-up (§5.2): training updates before ce_warmup_updates use Eq. 1; evaluation and later
    updates use Eq. 5. Rule none is Eq. 1 always."""
    vocab_scores, g, targets = _batch(1)
    key_valid = targets != PAD
    vocab = _vocab_terms(vocab_scores, targets)
    objective = TrimeObjective("local", ce_warmup_updates=10, kernel="chunked")
    warming = objective(vocab, g, targets, targets, key_valid, training=True, num_updates=9)
    assert torch.equal(warming.loss, warming.lm_nll) and torch.equal(warming.nll, warming.lm_nll)
    for training, updates in ((True, 10), (False, 0)):
        with_memory = objective(vocab, g, targets, targets, key_valid, training=training,
                                num_updates=updates)
        naive = naive_loss_over_memory(vocab_scores, g, targets, _memories(targets, "local"), PAD)
        assert torch.allclose(with_memory.loss[key_valid].sum(), naive, rtol=1e-6)
    none = TrimeObjective("none")(vocab, g, targets, targets, key_valid, training=False)
    assert torch.equal(none.loss, none.lm_nll)


def test_objective_refuses_bad_settings():
    for settings, message in (({"rule": "global"}, "must be one of none, local, long, ext"),
                              ({"label_smoothing": 1.0}, r"label smoothing must be in \[0, 1\)"),
                              ({"ce_warmup_updates": -1}, "CE warm-up must be >= 0"),
                              ({"temperature": 0.0}, "temperature must be > 0"),
                              ({"top_k": 0}, "top_k must be >= 1"),
                              ({"chunk_size": 0}, "chunk size must be >= 1")):
        with pytest.raises(ValueError, match=message):
            TrimeObjective(**settings)
    vocab_scores, g, targets = _batch(2)
    with pytest.raises(ValueError, match="label smoothing needs"):  # no smoothing term given
        TrimeObjective("local", label_smoothing=0.1, kernel="chunked")(
            _vocab_terms(vocab_scores, targets), g, targets, targets, targets != PAD)


def test_own_segment_draw_is_seeded_and_has_rate_p():
    """§4.3's per-batch draw: a function of (seed, update, draw) only, kept with rate 1 - p."""
    assert keeps_own_segment(0.5, 1, 7, 0) == keeps_own_segment(0.5, 1, 7, 0)
    kept = [keeps_own_segment(0.1, 1, update, 0) for update in range(4000)]
    assert abs(np.mean(kept) - 0.9) < 0.02
    assert all(keeps_own_segment(0.0, 3, u, 0) for u in range(100))
    assert not any(keeps_own_segment(1.0, 3, u, 0) for u in range(100))
    assert [keeps_own_segment(0.5, 1, u, 0) for u in range(50)] != \
        [keeps_own_segment(0.5, 2, u, 0) for u in range(50)]
