"""The TRIME objective as pure tensor functions (paper Eq. 5, 6).

For a context c with target w* and memory M (visibility from ``trime.memory``):

    P(w | c) ∝ exp(s_w) + Σ_{(c_j, x_j) ∈ M, x_j = w} exp(g(c)·g(c_j) / (√d τ))

where s_w is the unnormalised vocabulary score (logit for a plain softmax;
log Z_head + log p(w) for an adaptive softmax). Hence

    -log P(w* | c) = logaddexp(logZ_vocab, lse_all) - logaddexp(s_w*, lse_pos)

with lse_all = log Σ_{j visible} exp(sim_j) and lse_pos the same sum over the
visible j with x_j = w*. Both are computed in chunks of queries and in fp32;
the backward recomputes the scores chunk by chunk (like flash attention), so
the extra memory is O(N · chunk), never O(N²).
"""

import math
from dataclasses import dataclass

import torch

from trime.memory import ExtMemory, build_visibility

NEG_INF = float("-inf")


def _finite_or_zero(lse: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))


def _chunk_scores(queries, keys, scale, q0, q1, k0, k1):
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


def _memory_chunks(queries, keys, key_labels, query_targets, visibility, scale, chunk_size):
    """Yield (q0, q1, k0, k1, scores, visible, positive) for each chunk of queries.

    scores [G, C, K] fp32 over the chunk's key span; visible/positive are bool
    masks of the same shape (positive = visible and x_j = w*).
    """
    num_queries = queries.shape[1]
    for q0 in range(0, num_queries, chunk_size):
        q1 = min(num_queries, q0 + chunk_size)
        k0, k1 = visibility.key_range(q0, q1)
        if k1 <= k0:
            continue
        scores = _chunk_scores(queries, keys, scale, q0, q1, k0, k1)
        visible = visibility.visible(q0, q1, k0, k1)
        positive = visible & (key_labels[:, None, k0:k1] == query_targets[:, q0:q1, None])
        yield q0, q1, k0, k1, scores, visible, positive


class _MemoryLogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries, keys, key_labels, query_targets, visibility, scale, chunk_size):
        G, Nq, _ = queries.shape
        lse_all = torch.full((G, Nq), NEG_INF, dtype=torch.float32, device=queries.device)
        lse_pos = torch.full_like(lse_all, NEG_INF)
        chunks = _memory_chunks(queries, keys, key_labels, query_targets, visibility, scale, chunk_size)
        for q0, q1, k0, k1, scores, visible, positive in chunks:
            lse_all[:, q0:q1] = scores.masked_fill(~visible, NEG_INF).logsumexp(-1)
            lse_pos[:, q0:q1] = scores.masked_fill(~positive, NEG_INF).logsumexp(-1)
        ctx.save_for_backward(queries, keys, key_labels, query_targets, lse_all, lse_pos)
        ctx.visibility, ctx.scale, ctx.chunk_size = visibility, scale, chunk_size
        return lse_all, lse_pos

    @staticmethod
    def backward(ctx, grad_all, grad_pos):
        queries, keys, key_labels, query_targets, lse_all, lse_pos = ctx.saved_tensors
        visibility, scale, chunk_size = ctx.visibility, ctx.scale, ctx.chunk_size
        grad_all = torch.zeros_like(lse_all) if grad_all is None else grad_all.float()
        grad_pos = torch.zeros_like(lse_pos) if grad_pos is None else grad_pos.float()
        safe_all, safe_pos = _finite_or_zero(lse_all), _finite_or_zero(lse_pos)
        keys32 = keys.float()
        d_queries = torch.zeros(queries.shape, dtype=torch.float32, device=queries.device)
        d_keys = torch.zeros(keys.shape, dtype=torch.float32, device=keys.device)
        chunks = _memory_chunks(queries, keys, key_labels, query_targets, visibility, scale, chunk_size)
        for q0, q1, k0, k1, scores, visible, positive in chunks:
            # d lse / d score_j = softmax weight of j within its set
            p_all = torch.exp(scores - safe_all[:, q0:q1, None]).masked_fill(~visible, 0.0)
            p_pos = torch.exp(scores - safe_pos[:, q0:q1, None]).masked_fill(~positive, 0.0)
            d_scores = grad_all[:, q0:q1, None] * p_all + grad_pos[:, q0:q1, None] * p_pos
            d_scores = d_scores * scale
            d_queries[:, q0:q1] += torch.bmm(d_scores, keys32[:, k0:k1])
            d_keys[:, k0:k1] += torch.bmm(d_scores.transpose(1, 2), queries[:, q0:q1].float())
        return (
            d_queries.to(queries.dtype),
            d_keys.to(keys.dtype),
            None, None, None, None, None,
        )


def memory_logsumexp(queries, keys, key_labels, query_targets, visibility,
                     temperature: float = 1.0, chunk_size: int = 1024):
    """Log-sum-exp of memory similarities over visible and over positive keys.

    Args:
        queries: [G, Nq, d] query representations g(c).
        keys: [G, Nk, d] memory keys g(c_j) (may be the same tensor as queries).
        key_labels: [G, Nk] next token x_j of each memory entry.
        query_targets: [G, Nq] the target w* of each query.
        visibility: a rule from ``trime.memory`` (``key_range``, ``visible``).
        temperature: τ of Eq. 6 (1 in training); divides the memory logits only.
        chunk_size: queries per chunk.
    Returns:
        (lse_all, lse_pos), fp32 [G, Nq]; -inf where the set is empty.
        sim = g·g' / √d / τ (scaled dot product, §3).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"memory temperature must be > 0, got {temperature}")
    scale = 1.0 / (math.sqrt(queries.shape[-1]) * temperature)
    return _MemoryLogSumExp.apply(
        queries, keys, key_labels, query_targets, visibility, scale, int(chunk_size)
    )


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
                           keep_local=True):
    """memory_logsumexp over a batch of segments [B, T] under a visibility rule.

    - ``local``: each segment is its own group (a larger ``memory`` changes nothing).
    - ``long``: the memory's segments (by default the batch itself) are sorted by
      ``segment_starts`` (their offsets in the corpus) and concatenated into one
      group, so "earlier in the group, same ``doc_ids``" is "earlier in the
      document" whatever order the batch came in; each query sits at its own
      segment's place in that group.
    - ``ext``: the same layout; a query sees every token of the other segments and,
      if ``keep_local``, the earlier tokens of its own segment (``ExtMemory``).
    Returns (lse_all, lse_pos) as fp32 [B, T], in the batch's own order.
    """
    if rule == "local":
        visibility = build_visibility(rule, key_valid)
        return memory_logsumexp(queries, queries, labels, targets, visibility, chunk_size=chunk_size)
    if memory is None:
        if rule == "long" and (doc_ids is None or segment_starts is None):
            raise ValueError("--memory long needs each segment's corpus offset and document ids "
                             "(use --task trime_lm)")
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
    lse_all, lse_pos = memory_logsumexp(
        queries[query_order].reshape(1, B * T, -1), flat(memory.keys), flat(memory.labels),
        targets[query_order].reshape(1, B * T), visibility, chunk_size=chunk_size)
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


def mask_invisible_(scores, visibility, q0, q1, k0, k1):
    """Set the scores of keys that queries [q0, q1) may not see to -inf, in place.

    A rule may do it block by block (``mask_invisible_``) instead of building the
    whole [G, C, K] mask (``visible``).
    """
    if hasattr(visibility, "mask_invisible_"):
        return visibility.mask_invisible_(scores, q0, q1, k0, k1)
    return scores.masked_fill_(~visibility.visible(q0, q1, k0, k1), NEG_INF)


def _log_memory_mass(scores, key_labels):
    """Memory mass per distinct label: log Σ_{visible j, x_j = w} exp(score_j).

    scores [G, C, K] fp32, -inf for invisible keys (overwritten); key_labels [G, K].
    Returns (words [U], log_mass [G, C, U]; -inf where a query sees no entry of
    that word): only the U ≤ K words present in the key span, never [G, C, V].
    """
    words, inverse = torch.unique(key_labels, return_inverse=True)
    if scores.shape[-1] == 0:  # a chunk that sees no key
        return words, scores
    weights = scores
    shift = _finite_or_zero(weights.amax(-1, keepdim=True))  # per query, for a stable exp
    weights.sub_(shift).exp_()
    mass = weights.new_zeros(*weights.shape[:2], len(words))
    mass.scatter_add_(-1, inverse[:, None, :].expand_as(weights), weights)
    return words, torch.log(mass) + shift


def word_groups(labels):
    """Groups entries of each row by word: an id per (row, word) pair, [..., M] int64
    (labels [..., M], one row per query). Computed once, shared by Eq. 6 and Eq. 8."""
    flat = labels.reshape(-1, labels.shape[-1]).long()
    if flat.numel() == 0:
        return flat.view(labels.shape)
    rows = torch.arange(flat.shape[0], device=flat.device)[:, None]
    _, inverse = torch.unique(rows * (int(flat.max()) + 1) + flat, return_inverse=True)
    return inverse.view(labels.shape)


def _word_log_mass(scores, groups):
    """For each entry j of each query: log Σ_{entries i of that query with the word of j} exp(score_i).

    scores fp32 [..., M] (-inf = no entry); groups [..., M] from ``word_groups``.
    Duplicate words all get their word's total.
    """
    if groups.numel() == 0:
        return scores.clone()
    shift = _finite_or_zero(scores.amax(-1, keepdim=True))
    weights = (scores - shift).exp()
    mass = weights.new_zeros(int(groups.max()) + 1)
    mass.scatter_add_(0, groups.reshape(-1), weights.reshape(-1))
    return mass[groups].log() + shift


@dataclass
class VocabLogProbs:
    """The vocabulary distribution, already normalised: log_probs [G, Nq, V] fp32 = s_w - log Z_vocab
    (the memory functions correct it in place) and log_z [G, Nq, 1] = log Z_vocab. Pass this
    instead of unnormalised scores when the normalised form is at hand (adaptive softmax) to
    save a log-softmax over [tokens × V]."""

    log_probs: torch.Tensor
    log_z: torch.Tensor

    @property
    def shape(self):
        return self.log_probs.shape

    def __getitem__(self, index):
        return VocabLogProbs(self.log_probs[index], self.log_z[index])


def vocab_log_probs(vocab_scores) -> VocabLogProbs:
    """VocabLogProbs of unnormalised scores s_w [G, Nq, V] (returned as is if already one)."""
    if isinstance(vocab_scores, VocabLogProbs):
        return vocab_scores
    log_probs = torch.log_softmax(vocab_scores.float(), dim=-1)
    # log Z = s_w - (s_w - log Z) at word 0: no second pass over V
    return VocabLogProbs(log_probs, vocab_scores[..., :1].float() - log_probs[..., :1])


def _span_chunks(queries, keys, key_labels, visibility, scale, chunk_size, every_chunk=False):
    """For each chunk of queries [q0, q1) that sees any key of the span memory (local / long;
    ``visibility`` None = none), or every chunk if ``every_chunk``: (q0, q1, scores [G, C, K] =
    scale·q·k fp32 with -inf for invisible keys, the span's key labels [G, K]); K = 0 for a
    chunk that sees no key."""
    num_queries = queries.shape[1]
    for q0 in range(0, num_queries, chunk_size):
        q1 = min(num_queries, q0 + chunk_size)
        k0, k1 = visibility.key_range(q0, q1) if visibility is not None else (0, 0)
        if k1 <= k0:
            if every_chunk:
                yield q0, q1, queries.new_zeros(queries.shape[0], q1 - q0, 0,
                                                dtype=torch.float32), key_labels[:, :0]
            continue
        scores = mask_invisible_(_chunk_scores(queries, keys, scale, q0, q1, k0, k1),
                                 visibility, q0, q1, k0, k1)
        yield q0, q1, scores, key_labels[:, k0:k1]


def _eval_memory_chunks(vocab_scores, queries, keys, key_labels, visibility, scale, chunk_size,
                        every_chunk=False):
    """(vocab, chunks): ``vocab.log_probs`` starts as the vocabulary log-softmax
    s_w - log Z_vocab of every query (``vocab_scores`` unnormalised, or a VocabLogProbs whose
    log_probs are then corrected in place); ``chunks`` yields ``_span_chunks``' (q0, q1,
    scores, labels) with, after q1, the chunk's rows of ``vocab.log_probs`` as a view to
    correct in place.
    """
    vocab = vocab_log_probs(vocab_scores)
    spans = _span_chunks(queries, keys, key_labels, visibility, scale, chunk_size, every_chunk)
    chunks = ((q0, q1, vocab.log_probs[:, q0:q1], scores, labels)
              for q0, q1, scores, labels in spans)
    return vocab, chunks


def _memory_columns(words, log_mass, vocab_size):
    # invisible padding keys carry no mass; gather/scatter_ beat advanced indexing on CPU
    return words.clamp(0, vocab_size - 1).expand(*log_mass.shape)


def _memory_distribution(entry_scores, groups):
    """P' of Eq. 8 at each entry's word: (log P'_w [..., M], whether a query has any entry
    [..., 1]); entry_scores already divided by the temperature, -inf = no entry."""
    total = entry_scores.logsumexp(-1, keepdim=True)
    return _word_log_mass(entry_scores, groups) - _finite_or_zero(total), torch.isfinite(total)


def _shift_and_set_(chunk, columns, at_words, shift, interp=None):
    """chunk += shift everywhere and = at_words at ``columns``, in one pass over the vocabulary.
    ``interp`` = (λ, log P'_w at the columns, whether a query has any P' entry [G, C, 1]):
    Eq. 9, log[(1-λ) P + λ P'], folded into the same pass (a query without P' keeps P)."""
    if interp is not None:
        lam, log_memory_probs, has_memory = interp
        keep = torch.where(has_memory, math.log1p(-lam), 0.0)
        at_words = torch.logaddexp(at_words + keep, log_memory_probs + math.log(lam))
        shift = shift + keep
    chunk.add_(shift)
    chunk.scatter_(-1, columns, at_words)


def _add_memory_(chunk, log_z_vocab, columns, word_log_mass, total_log_mass, interp=None):
    """Eq. 6 in place: chunk holds s_w - log Z_vocab; becomes log(exp(s_w) + m_w) - log Z with
    Z = Z_vocab + Σ m. ``columns`` [G, C, M] words with memory, ``word_log_mass`` their log m_w
    (equal for equal columns), ``total_log_mass`` [G, C, 1] log Σ_w m_w; ``interp``: Eq. 9 on
    top (``_shift_and_set_``)."""
    log_z_ratio = torch.nn.functional.softplus(total_log_mass - log_z_vocab)
    at_words = torch.logaddexp(chunk.gather(-1, columns), word_log_mass - log_z_vocab) - log_z_ratio
    _shift_and_set_(chunk, columns, at_words, -log_z_ratio, interp)


def interpolate_memory_(log_probs, entry_scores, entry_labels, lam: float):
    """Eq. 9 (and kNN-LM): log[(1-λ) P(w) + λ P'(w)] in place on log_probs [..., V], with
    P'(w) ∝ Σ_{entries j, label w} exp(entry_scores_j) (Eq. 8; scores already divided by
    the temperature). entry_scores / entry_labels [..., M]; -inf = no entry. A query with
    no entry keeps P."""
    if not 0.0 <= lam < 1.0:
        raise ValueError(f"the interpolation weight lambda must be in [0, 1), got {lam}")
    if lam == 0.0 or entry_scores.shape[-1] == 0:
        return log_probs
    entry_labels = entry_labels.long()
    log_memory_probs, has_memory = _memory_distribution(entry_scores, word_groups(entry_labels))
    _shift_and_set_(log_probs, entry_labels, log_probs.gather(-1, entry_labels), 0.0,
                    (lam, log_memory_probs, has_memory))
    return log_probs


@dataclass
class RetrievedMemory:
    """kNN(M_ext, g(c)) of Eq. 7 for every query: sims [G, Nq, K] = sim(g(c), g(c_j)) (before
    any temperature; -inf = no entry) and labels [G, Nq, K] x_j."""

    sims: torch.Tensor
    labels: torch.Tensor


def memory_log_probs(vocab_scores, queries, keys, key_labels, visibility,
                     temperature: float = 1.0, chunk_size: int = 512,
                     retrieved: RetrievedMemory = None, interp_lambda: float = 0.0,
                     interp_temperature: float = 1.0, interp_span: bool = True):
    """Full log-distribution of Eq. 6 over the vocabulary (evaluation; no grad needed).

    Args:
        vocab_scores: [G, Nq, V] unnormalised vocabulary scores s_w, or a VocabLogProbs
            (whose log_probs then become the result, corrected in place).
        queries, keys, key_labels, visibility, temperature: as in ``memory_logsumexp``
            (the span memory: local / long; ``visibility`` None = no span memory).
        retrieved: external memory entries of each query (TrimeLM_ext, Eq. 7), joining the
            softmax with the same τ.
        interp_lambda, interp_temperature: λ and τ′ of Eq. 8–9: the result is interpolated
            with P' over the memory at temperature τ′ (λ = 0: Eq. 6 alone). ``interp_span``:
            P' over M_eval = span ∪ retrieved (Eq. 8); False: over the retrieved entries only.
    Returns:
        fp32 [G, Nq, V] log P(w | c); finite wherever s_w is finite.

    log P(w) = logaddexp(s_w, log m_w) - log Z with Z = Z_vocab + Σ_w m_w: one
    fused log-softmax gives s_w - log Z_vocab for every word; then every word is
    shifted by log(Z / Z_vocab) and the words present in memory are corrected.
    """
    sqrt_d = math.sqrt(queries.shape[-1])
    if not 0.0 <= interp_lambda < 1.0:
        raise ValueError(f"the interpolation weight lambda must be in [0, 1), got {interp_lambda}")
    vocab, chunks = _eval_memory_chunks(vocab_scores, queries, keys, key_labels, visibility,
                                        1.0 / (sqrt_d * temperature), chunk_size,
                                        every_chunk=retrieved is not None)
    V = vocab.shape[-1]
    for q0, q1, chunk, scores, span_labels in chunks:
        log_z_vocab = vocab.log_z[:, q0:q1]
        span_for_interp = scores * (temperature / interp_temperature) \
            if interp_lambda > 0 and interp_span else None
        words, log_mass = _log_memory_mass(scores, span_labels)
        columns = _memory_columns(words, log_mass, V)
        if retrieved is None and interp_lambda == 0:  # Eq. 6 over local/long memory only
            _add_memory_(chunk, log_z_vocab, columns, log_mass, log_mass.logsumexp(-1, keepdim=True))
            continue
        # per query: entries = the span's words (their mass) + the retrieved entries
        if retrieved is not None:
            ext_sims = retrieved.sims[:, q0:q1].float()
            entries = torch.cat([log_mass, ext_sims / temperature], -1)
            columns = torch.cat([columns, retrieved.labels[:, q0:q1].long()], -1)
        else:
            ext_sims, entries = log_mass[..., :0], log_mass
        groups = word_groups(columns)
        interp = None
        if interp_lambda > 0:  # P' of Eq. 8 at τ′ over the same columns (-inf: not in P')
            span_prime = _log_memory_mass(span_for_interp, span_labels)[1] if interp_span \
                else torch.full_like(log_mass, NEG_INF)
            interp_entries = torch.cat([span_prime, ext_sims / interp_temperature], -1)
            interp = (interp_lambda, *_memory_distribution(interp_entries, groups))
        _add_memory_(chunk, log_z_vocab, columns, _word_log_mass(entries, groups),
                     entries.logsumexp(-1, keepdim=True), interp)
    return vocab.log_probs


def knnlm_log_probs(vocab_scores, retrieved: RetrievedMemory, lam: float, temperature: float):
    """kNN-LM (Khandelwal et al., 2020): log[(1-λ) p_LM(w) + λ p_kNN(w)],
    p_kNN(w) ∝ Σ_{retrieved j, x_j = w} exp(sim_j / T). fp32 [G, Nq, V]."""
    if temperature <= 0:
        raise ValueError(f"--knn-temp must be > 0, got {temperature}")
    out = vocab_log_probs(vocab_scores).log_probs
    return interpolate_memory_(out, retrieved.sims.float() / temperature, retrieved.labels, lam)


def cache_log_probs(vocab_scores, queries, keys, key_labels, visibility, lam: float,
                    theta: float, chunk_size: int = 512):
    """Continuous cache (Grave et al., 2017): log[(1-λ) p_LM(w) + λ p_cache(w)], fp32 [G, Nq, V].

    p_cache(w) ∝ Σ_{visible j, x_j = w} exp(θ h·h_j); where a query sees no
    memory, p = p_LM.
    """
    if not 0.0 <= lam < 1.0:
        raise ValueError(f"--cache-lambda must be in [0, 1), got {lam}")
    if theta <= 0:
        raise ValueError(f"--cache-theta must be > 0, got {theta}")
    if lam == 0.0:
        return vocab_log_probs(vocab_scores).log_probs
    vocab, chunks = _eval_memory_chunks(vocab_scores, queries, keys, key_labels, visibility, theta,
                                        chunk_size)
    V = vocab.shape[-1]
    for _, _, chunk, scores, span_labels in chunks:
        words, log_mass = _log_memory_mass(scores, span_labels)
        interpolate_memory_(chunk, log_mass, _memory_columns(words, log_mass, V), lam)
    return vocab.log_probs


STAT_SETS = ("span", "ext", "eval")  # memory sets summarised by memory_target_stats


def stat_column(memory_set: str, temperature_index: int, positive: bool, num_temperatures: int):
    """Column of ``memory_target_stats``'s output holding log Σ exp(sim/t) over ``memory_set``
    (all entries, or only those labelled w* if ``positive``) for the t-th temperature."""
    return 2 + (STAT_SETS.index(memory_set) * num_temperatures + temperature_index) * 2 + int(positive)


def memory_target_stats(target_score, log_z_vocab, queries, keys, key_labels, visibility, targets,
                        temperatures, retrieved: RetrievedMemory = None, sets=STAT_SETS,
                        chunk_size: int = 512):
    """Per-token statistics from which log P(w*) of Eq. 6–9 and kNN-LM follow for any λ and any
    temperature in ``temperatures`` (``target_log_prob_from_stats``): what ``fairseq-eval-lm``
    reads (the target's log-probability) without a [tokens × V] distribution, and what
    ``trime-tune`` keeps to score a whole grid from one model pass.

    Args:
        target_score, log_z_vocab: [G, Nq] s_w* and log Z_vocab (``vocab.eval_target_scores``).
        queries, keys, key_labels, visibility, retrieved: as in ``memory_log_probs``.
        targets: [G, Nq] w* of each query.
        sets: the memory sets to summarise, among STAT_SETS (span = local/long, ext =
            retrieved, eval = both); the others' columns are NaN.
    Returns fp32 [G, Nq, 2 + 6·len(temperatures)]: s_w*, log Z_vocab, then for each memory
    set and temperature t, log Σ_j exp(sim_j / t) over its entries and over its entries
    labelled w* (``stat_column``); -inf for an empty set. sim = g·g'/√d for span entries.
    """
    G, num_queries = targets.shape
    num_temps = len(temperatures)
    out = torch.full((G, num_queries, 2 + 6 * num_temps), NEG_INF, dtype=torch.float32,
                     device=targets.device)
    out[..., 0], out[..., 1] = target_score, log_z_vocab
    for name in STAT_SETS:
        if name not in sets:
            for i in range(num_temps):
                for positive in (False, True):
                    out[..., stat_column(name, i, positive, num_temps)] = float("nan")
    inv_sqrt_d = 1.0 / math.sqrt(queries.shape[-1])
    spans = _span_chunks(queries, keys, key_labels, visibility, inv_sqrt_d, chunk_size,
                         every_chunk=True)
    for q0, q1, span, span_labels in spans:
        target = targets[:, q0:q1, None]
        found = {}
        if span.shape[-1]:
            found["span"] = (span, span_labels[:, None, :] == target)
        if retrieved is not None:
            found["ext"] = (retrieved.sims[:, q0:q1].float(), retrieved.labels[:, q0:q1] == target)
        if "eval" in sets and found:
            parts = list(found.values())
            found["eval"] = parts[0] if len(parts) == 1 else \
                (torch.cat([s for s, _ in parts], -1), torch.cat([p for _, p in parts], -1))
        for name, (sims, positive) in found.items():
            if name not in sets:
                continue
            for i, t in enumerate(temperatures):
                lse_all, lse_pos = _logsumexp_all_and_positive(sims, positive, 1.0 / t)
                out[:, q0:q1, stat_column(name, i, False, num_temps)] = lse_all
                out[:, q0:q1, stat_column(name, i, True, num_temps)] = lse_pos
    return out


def _logsumexp_all_and_positive(sims, positive, scale):
    """(log Σ_j exp(scale·sim_j), the same over the positive j), [..., K] -> [...]: one exp pass."""
    peak = _finite_or_zero(sims.amax(-1, keepdim=True))
    weights = torch.exp((sims - peak) * scale) if scale != 1.0 else torch.exp(sims - peak)
    peak = peak[..., 0] * scale
    lse_all = torch.log(weights.sum(-1)) + peak
    positive_mass = (weights * positive).sum(-1)
    lse_pos = torch.log(positive_mass) + peak
    # positives far below the peak (denormal or zero mass): recompute those rows exactly
    underflow = (positive_mass < 1e-30) & positive.any(-1)
    if underflow.any():
        lse_pos[underflow] = (sims[underflow].masked_fill(~positive[underflow], NEG_INF)
                              * scale).logsumexp(-1)
    return lse_all, lse_pos


def _log_ratio(numerator, denominator):
    """log(numerator / denominator) in log space; -inf (no memory) where the set is empty."""
    return torch.where(torch.isfinite(denominator), numerator - _finite_or_zero(denominator),
                       torch.full_like(numerator, NEG_INF))


def target_log_prob_from_stats(stats, temperatures, scoring="trime", tau=1.0, lam=0.0,
                               interp_temperature=1.0, interp_memory="eval", memory="eval"):
    """log P_final(w*) [...] from ``memory_target_stats`` (temperatures must hold τ and τ′).

    scoring trime: Eq. 6 over ``memory`` (eval, span or ext) at τ, then Eq. 9 with P' over
    ``interp_memory`` at τ′ (λ = 0: Eq. 6 alone); knnlm: (1-λ) p_LM + λ p_kNN with
    p_kNN over the retrieved entries at T = ``interp_temperature``.
    """
    num_temps = len(temperatures)

    def lse(memory_set, t, positive):
        return stats[..., stat_column(memory_set, temperatures.index(t), positive, num_temps)]

    target_score, log_z_vocab = stats[..., 0], stats[..., 1]
    if scoring == "knnlm":
        log_p = target_score - log_z_vocab
        interp_memory = "ext"
    else:
        log_p = (torch.logaddexp(target_score, lse(memory, tau, True))
                 - torch.logaddexp(log_z_vocab, lse(memory, tau, False)))
    if lam == 0:
        return log_p
    all_memory = lse(interp_memory, interp_temperature, False)
    log_p_memory = _log_ratio(lse(interp_memory, interp_temperature, True), all_memory)
    mixed = torch.logaddexp(log_p + math.log1p(-lam), log_p_memory + math.log(lam))
    return torch.where(torch.isfinite(all_memory), mixed, log_p)  # no memory: P alone
