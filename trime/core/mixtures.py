"""Evaluation distributions with memory (no gradient needed): Eq. 6-9, kNN-LM, continuous cache.

- ``memory_log_probs``: Eq. 6 over span memory (local / long, a visibility rule) and the
  retrieved external entries (Eq. 7), then Eq. 8-9 (λ, τ′) on top;
- ``knnlm_log_probs``: kNN-LM (Khandelwal et al., 2020), (1-λ) p_LM + λ p_kNN;
- ``cache_log_probs``: the continuous cache (Grave et al., 2017), (1-λ) p_LM + λ p_cache;
- ``knnlm_cache_log_probs``: kNN-LM + continuous cache, the cache on top of the kNN-LM.

Every function returns the full log-distribution over the vocabulary [G, Nq, V] in
fp32, built without [C, V] temporaries: one fused log-softmax, then the words present
in memory corrected in place. Span memory is scored chunk by chunk and only over the
words present in a chunk's key span (never a dense [tokens × keys × V] tensor).
"""

import math
from dataclasses import dataclass

import torch

from trime.core.logspace import NEG_INF, finite_or_zero
from trime.core.memory_lse import chunk_scores


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
    shift = finite_or_zero(weights.amax(-1, keepdim=True))  # per query, for a stable exp
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
    shift = finite_or_zero(scores.amax(-1, keepdim=True))
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


def span_chunks(queries, keys, key_labels, visibility, scale, chunk_size, every_chunk=False):
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
        scores = visibility.mask_invisible_(chunk_scores(queries, keys, scale, q0, q1, k0, k1),
                                            q0, q1, k0, k1)
        yield q0, q1, scores, key_labels[:, k0:k1]


def _eval_memory_chunks(vocab_scores, queries, keys, key_labels, visibility, scale, chunk_size,
                        every_chunk=False):
    """(vocab, chunks): ``vocab.log_probs`` starts as the vocabulary log-softmax
    s_w - log Z_vocab of every query (``vocab_scores`` unnormalised, or a VocabLogProbs whose
    log_probs are then corrected in place); ``chunks`` yields ``span_chunks``' (q0, q1,
    scores, labels) with, after q1, the chunk's rows of ``vocab.log_probs`` as a view to
    correct in place.
    """
    vocab = vocab_log_probs(vocab_scores)
    spans = span_chunks(queries, keys, key_labels, visibility, scale, chunk_size, every_chunk)
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
    return _word_log_mass(entry_scores, groups) - finite_or_zero(total), torch.isfinite(total)


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
        raise ValueError(f"the kNN-LM temperature T must be > 0, got {temperature}")
    out = vocab_log_probs(vocab_scores).log_probs
    return interpolate_memory_(out, retrieved.sims.float() / temperature, retrieved.labels, lam)


def cache_log_probs(vocab_scores, queries, keys, key_labels, visibility, lam: float,
                    theta: float, chunk_size: int = 512):
    """Continuous cache (Grave et al., 2017): log[(1-λ) p_LM(w) + λ p_cache(w)], fp32 [G, Nq, V].

    p_cache(w) ∝ Σ_{visible j, x_j = w} exp(θ h·h_j); where a query sees no
    memory, p = p_LM.
    """
    if not 0.0 <= lam < 1.0:
        raise ValueError(f"the cache lambda must be in [0, 1), got {lam}")
    if theta <= 0:
        raise ValueError(f"the cache theta must be > 0, got {theta}")
    if lam == 0.0:
        return vocab_log_probs(vocab_scores).log_probs
    vocab, chunks = _eval_memory_chunks(vocab_scores, queries, keys, key_labels, visibility, theta,
                                        chunk_size)
    V = vocab.shape[-1]
    for _, _, chunk, scores, span_labels in chunks:
        words, log_mass = _log_memory_mass(scores, span_labels)
        interpolate_memory_(chunk, log_mass, _memory_columns(words, log_mass, V), lam)
    return vocab.log_probs


def knnlm_cache_log_probs(vocab_scores, retrieved: RetrievedMemory, lam: float, temperature: float,
                          queries, keys, key_labels, visibility, cache_lambda: float,
                          cache_theta: float, chunk_size: int = 512):
    """kNN-LM + continuous cache (the "kNN-LM + cont. cache" rows of Khandelwal et al., 2020 and
    of TRIME's Tables 2 and 10), fp32 [G, Nq, V]: the continuous cache (Grave et al., 2017)
    applied to the kNN-LM's distribution as its base LM,

        P(w) = (1-λ_c) [(1-λ) p_LM(w) + λ p_kNN(w)] + λ_c p_cache(w),

    p_kNN over the retrieved entries at temperature T, p_cache(w) ∝ Σ_{visible j, x_j = w}
    exp(θ h·h_j) over the span memory. λ_c = 0 is the kNN-LM exactly; a query without
    retrieved entries (cache memory) keeps the other terms."""
    knnlm = knnlm_log_probs(vocab_scores, retrieved, lam, temperature)
    normalised = VocabLogProbs(knnlm, torch.zeros_like(knnlm[..., :1]))
    return cache_log_probs(normalised, queries, keys, key_labels, visibility, cache_lambda,
                           cache_theta, chunk_size)
