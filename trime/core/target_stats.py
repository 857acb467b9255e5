"""Per-token statistics from which log P(w*) follows for any λ and temperature (Eq. 6-9, kNN-LM).

``fairseq-eval-lm`` reads only each target's log-probability, and ``trime-tune``
scores a whole grid of (τ, λ, τ′) from one model pass: both need, per scored token,
s_w*, log Z_vocab and, for each memory set and temperature t, the log-sum-exp of
sim/t over the set's entries and over those labelled w* — never a [tokens × V]
distribution. ``TargetStats`` holds those numbers by name; ``target_log_prob``
turns them into log P(w*) exactly as ``trime.core.mixtures`` would at the target.
"""

import math
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import torch

from trime.core.logspace import NEG_INF, finite_or_zero, log_ratio
from trime.core.mixtures import RetrievedMemory, span_chunks

# span = local / long memory of the input itself, ext = retrieved entries, eval = both (M_eval);
# cache = the span memory under the continuous cache's key h and raw h·h_j (θ = 1 / t)
MEMORY_SETS = ("span", "ext", "eval")
CACHE_SET = "cache"


@dataclass
class TargetStats:
    """s_w* and log Z_vocab [...], and log Σ_j exp(sim_j / t) for each computed memory set:
    ``lse_all[set]`` over its entries, ``lse_pos[set]`` over those labelled w*, both
    [..., len(temperatures)] (-inf for an empty set). sim = g·g'/√d for span entries, the
    retriever's similarity for external ones and h·h_j for the cache set (so t = 1/θ).
    Indexing (``stats[mask]``) indexes every tensor."""

    target_score: torch.Tensor
    log_z_vocab: torch.Tensor
    temperatures: Tuple[float, ...]
    lse_all: Dict[str, torch.Tensor]
    lse_pos: Dict[str, torch.Tensor]

    def memory_lse(self, memory_set: str, temperature: float, positive: bool = False):
        """log Σ exp(sim/t) [...] over ``memory_set`` (only entries labelled w* if ``positive``)."""
        if memory_set not in self.lse_all:
            raise KeyError(f"statistics of memory set {memory_set!r} were not computed "
                           f"(computed: {', '.join(self.lse_all) or 'none'})")
        if temperature not in self.temperatures:
            raise KeyError(f"temperature {temperature} is not among the computed ones "
                           f"{list(self.temperatures)}")
        lse = self.lse_pos if positive else self.lse_all
        return lse[memory_set][..., self.temperatures.index(temperature)]

    @property
    def vocab_log_prob(self) -> torch.Tensor:
        """log p_LM(w*): the vocabulary distribution alone."""
        return self.target_score - self.log_z_vocab

    def _map(self, fn) -> "TargetStats":
        return TargetStats(fn(self.target_score), fn(self.log_z_vocab), self.temperatures,
                           {k: fn(v) for k, v in self.lse_all.items()},
                           {k: fn(v) for k, v in self.lse_pos.items()})

    def __getitem__(self, index) -> "TargetStats":
        return self._map(lambda tensor: tensor[index])

    def to(self, device) -> "TargetStats":
        return self._map(lambda tensor: tensor.to(device))

    @staticmethod
    def cat(parts: Sequence["TargetStats"], dim: int = 0) -> "TargetStats":
        first = parts[0]
        return TargetStats(torch.cat([p.target_score for p in parts], dim),
                           torch.cat([p.log_z_vocab for p in parts], dim), first.temperatures,
                           {k: torch.cat([p.lse_all[k] for p in parts], dim) for k in first.lse_all},
                           {k: torch.cat([p.lse_pos[k] for p in parts], dim) for k in first.lse_pos})

    def target_log_prob(self, scoring: str = "trime", tau: float = 1.0, lam: float = 0.0,
                        interp_temperature: float = 1.0, interp_memory: str = "eval",
                        memory: str = "eval", cache_lambda: float = 0.0,
                        cache_theta: float = 1.0) -> torch.Tensor:
        """log P_final(w*) [...] (the temperatures must have been computed).

        scoring trime: Eq. 6 over ``memory`` (eval, span or ext) at τ, then Eq. 9 with P' over
        ``interp_memory`` at τ′ (λ = 0: Eq. 6 alone); knnlm: (1-λ) p_LM + λ p_kNN with
        p_kNN over the retrieved entries at T = ``interp_temperature``, and with
        ``cache_lambda`` > 0 the continuous cache on top (``knnlm_cache_log_probs``): temperature
        1/``cache_theta`` of the cache set; cache: the continuous cache alone (``cache_log_probs``).
        """
        if scoring in ("knnlm", "cache"):  # the cache alone: λ = 0 for the kNN term
            log_p = _mix(self.vocab_log_prob, self, "ext", interp_temperature,
                         lam if scoring == "knnlm" else 0.0)
            return _mix(log_p, self, CACHE_SET, 1.0 / cache_theta, cache_lambda)
        if cache_lambda:
            raise ValueError("the continuous cache goes with kNN-LM or cache scoring only")
        log_p = (torch.logaddexp(self.target_score, self.memory_lse(memory, tau, True))
                 - torch.logaddexp(self.log_z_vocab, self.memory_lse(memory, tau)))
        return _mix(log_p, self, interp_memory, interp_temperature, lam)


def _mix(log_p, stats: TargetStats, memory_set: str, temperature: float, lam: float):
    """log[(1-λ) P(w*) + λ P'(w*)], P'(w*) = the share of ``memory_set``'s mass at temperature t
    on entries labelled w* (Eq. 9, kNN-LM, cache); P alone where the set is empty or λ = 0."""
    if lam == 0:
        return log_p
    all_memory = stats.memory_lse(memory_set, temperature)
    log_p_memory = log_ratio(stats.memory_lse(memory_set, temperature, True), all_memory)
    mixed = torch.logaddexp(log_p + math.log1p(-lam), log_p_memory + math.log(lam))
    return torch.where(torch.isfinite(all_memory), mixed, log_p)


def memory_target_stats(target_score, log_z_vocab, queries, keys, key_labels, visibility, targets,
                        temperatures, retrieved: RetrievedMemory = None, sets=MEMORY_SETS,
                        chunk_size: int = 512, cache_queries=None, cache_keys=None) -> TargetStats:
    """The ``TargetStats`` of every query.

    Args:
        target_score, log_z_vocab: [G, Nq] s_w* and log Z_vocab.
        queries, keys, key_labels, visibility, retrieved: as in
            ``trime.core.mixtures.memory_log_probs`` (span memory; external entries).
        targets: [G, Nq] w* of each query.
        temperatures: the temperatures t to summarise at.
        sets: the memory sets to summarise, among MEMORY_SETS and CACHE_SET.
        cache_queries, cache_keys: h of the queries and of the span keys, for CACHE_SET (the same
            span memory: ``key_labels``, ``visibility``).
    """
    unknown = set(sets) - set(MEMORY_SETS) - {CACHE_SET}
    if unknown:
        raise ValueError(f"unknown memory sets {sorted(unknown)}; choose among "
                         f"{MEMORY_SETS + (CACHE_SET,)}")
    if CACHE_SET in sets and (cache_queries is None or cache_keys is None):
        raise ValueError("the cache set needs the cache's queries and keys")
    temperatures = tuple(float(t) for t in temperatures)
    shape = (*targets.shape, len(temperatures))
    empty = {name: torch.full(shape, NEG_INF, dtype=torch.float32, device=targets.device)
             for name in sets}
    stats = TargetStats(target_score.float(), log_z_vocab.float(), temperatures,
                        empty, {name: lse.clone() for name, lse in empty.items()})
    inv_sqrt_d = 1.0 / math.sqrt(queries.shape[-1])
    spans = span_chunks(queries, keys, key_labels, visibility, inv_sqrt_d, chunk_size,
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
            if name == "eval" and "span" in sets and found["eval"] is found.get("span"):
                for lse in (stats.lse_all, stats.lse_pos):  # eval is the span memory: copy it
                    lse["eval"][:, q0:q1] = lse["span"][:, q0:q1]
                continue
            _store(stats, name, q0, q1, sims, positive)
    if CACHE_SET in sets:  # raw h·h_j: temperature t is the cache's 1/θ
        for q0, q1, sims, labels in span_chunks(cache_queries, cache_keys, key_labels, visibility,
                                                1.0, chunk_size):
            _store(stats, CACHE_SET, q0, q1, sims, labels[:, None, :] == targets[:, q0:q1, None])
    return stats


# exp below this is denormal in float32, and CPU's exp is ~30x slower there; such a term is under
# 1.7e-38 of the peak's exp(0) = 1 in the same sum, which no float sum can see, so the exponents
# are floored here (the raw h·h_j of the cache at a large θ put most entries there)
EXP_FLOOR = -87.0


def _store(stats: TargetStats, name, q0, q1, sims, positive):
    """Write a chunk's log-sum-exps of one memory set at every temperature. A chunk holds up to
    G × 512 × S similarities, so every pass over it counts: the peak is subtracted once and each
    temperature reuses one buffer for exp(sim / t). The positive entries (those labelled w*, a
    few per cent) are gathered once, and their log-sum-exp is taken per query from their own
    maximum, so that it stays exact however far below the peak they lie (raw h·h_j of the cache
    at a large θ) without another pass over the chunk."""
    peak = sims.amax(-1, keepdim=True)
    empty = ~torch.isfinite(peak[..., 0])  # no visible entry: the log-sum-exp is -inf
    peak = finite_or_zero(peak)
    shifted = sims - peak
    positive_at = positive.reshape(-1).nonzero().squeeze(1)
    positive_shifted = shifted.reshape(-1)[positive_at]
    query_of_positive = positive_at // sims.shape[-1]
    queries = positive.shape[:-1]
    weights = torch.empty_like(shifted)
    for i, t in enumerate(stats.temperatures):
        scale = 1.0 / t
        top = peak[..., 0] * scale
        torch.mul(shifted, scale, out=weights).clamp_(min=EXP_FLOOR).exp_()
        stats.lse_all[name][:, q0:q1, i] = (torch.log(weights.sum(-1)) + top).masked_fill_(empty, NEG_INF)
        scaled = positive_shifted * scale
        positive_max = torch.full((queries.numel(),), NEG_INF, dtype=scaled.dtype, device=scaled.device)
        positive_max = finite_or_zero(positive_max.scatter_reduce_(0, query_of_positive, scaled, "amax"))
        positive_mass = torch.zeros_like(positive_max).index_add_(
            0, query_of_positive, (scaled - positive_max[query_of_positive]).exp_())
        lse_pos = torch.log(positive_mass) + positive_max
        stats.lse_pos[name][:, q0:q1, i] = lse_pos.view(queries) + top
