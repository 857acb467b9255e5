"""Scoring a batch with evaluation memory, with two explicit entry points.

- ``MemoryScorer.target_log_probs``: log P(w*) of every position [B, T] and nothing else,
  computed from per-token statistics (``trime.core.target_stats``) without a
  [tokens × V] distribution. For ``fairseq-eval-lm``, whose scorer reads only the
  targets: its batches carry ``sample[TARGETS_ONLY] = True`` (set by the task's
  evaluation dataloader), and only then does a model return this (broadcast over V).
- ``MemoryScorer.full_log_probs``: the whole next-token distribution [B, T, V]; for
  everything else (beam search in ``fairseq-generate`` reads every entry).
- ``MemoryScorer.target_stats``: the statistics themselves, for ``trime-tune``.

A scorer serves one stream (one split): with long memory it owns the FIFO carried
from batch to batch, so rows must arrive in stream order. Memories (paper §4):
span memory = the input's own earlier tokens (local) and the FIFO (long); external
memory = the retriever's top-K datastore entries (Eq. 7).
"""

from dataclasses import dataclass

import torch

from trime.core.fifo import FifoMemory, score_with_long_memory
from trime.core.mixtures import (RetrievedMemory, cache_log_probs, knnlm_cache_log_probs,
                                 knnlm_log_probs, memory_log_probs)
from trime.core.target_stats import CACHE_SET, MEMORY_SETS, TargetStats, memory_target_stats
from trime.core.visibility import build_visibility, memory_labels
from trime.glue import vocab
from trime.settings import EvalSettings
from trime.glue.query import pick_key

TARGETS_ONLY = "trime_targets_only"  # batch key: the consumer reads only the targets' entries


@dataclass
class _TargetVocab:
    """s_w* and log Z_vocab [B, T] of a batch, sliceable by rows like the vocabulary scores."""

    target_score: torch.Tensor
    log_z: torch.Tensor

    @property
    def shape(self):
        return self.target_score.shape

    def __getitem__(self, rows):
        return _TargetVocab(self.target_score[rows], self.log_z[rows])


def _rows_of(retrieved, rows):
    return None if retrieved is None else RetrievedMemory(retrieved.sims[rows], retrieved.labels[rows])


class MemoryScorer:
    """Eq. 6-9 / kNN-LM / continuous cache for the batches of one stream, under ``settings``.

    Args:
        settings: the checked evaluation options.
        decoder: the fairseq decoder whose adaptive softmax turns the features it returned into
            vocabulary scores, or None when what the model returned are the logits themselves
            (a plain softmax; ``trime.hf``).
        pad: the padding index.
        retriever: ``trime.extmem.retrieval.Retriever`` for external memory (``...,ext``).
        exclude_own_tokens: the datastore holds this stream: a token never retrieves its
            own entry (rows = ``sample["trime_label_offset"]``).
    """

    def __init__(self, settings: EvalSettings, decoder, pad: int, retriever=None,
                 exclude_own_tokens: bool = False):
        if settings.uses_ext and retriever is None:
            raise ValueError(f"--eval-memory {settings.eval_memory}: no external memory to search "
                             "(evaluate with --dstore DIR)")
        self.settings, self.decoder, self.pad = settings, decoder, pad
        self.retriever, self.exclude_own_tokens = retriever, exclude_own_tokens
        self.fifo = FifoMemory(settings.long_memory_size, settings.reset_at_documents) \
            if "long" in settings.span_memory else None

    # -- the entry points -----------------------------------------------------------

    def target_log_probs(self, decoder_out, extra, sample) -> torch.Tensor:
        """log P(w*) fp32 [B, T] under the settings (only the targets are computed)."""
        settings = self.settings
        if settings.eval_scoring == "cache":  # the cache builds the distribution, then reads it
            target = sample["target"]
            full = self.full_log_probs(decoder_out, extra, sample)
            return full.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (pad may be < 0)
        temperatures = {settings.memory_temp, settings.knn_temp or 1.0}
        sets = ("ext",) if settings.eval_scoring == "knnlm" else ("ext", "eval")
        if settings.uses_cache:  # kNN-LM + cache: the cache set at t = 1/θ
            temperatures.add(1.0 / settings.cache_theta)
            sets += (CACHE_SET,)
        stats = self._stats(decoder_out, extra, sample, sorted(temperatures), sets)
        return stats.target_log_prob(settings.eval_scoring, settings.memory_temp,
                                     settings.knn_lambda or 0.0, settings.knn_temp or 1.0,
                                     settings.knn_interp_memory,
                                     cache_lambda=settings.cache_lambda if settings.uses_cache else 0.0,
                                     cache_theta=settings.cache_theta)

    def full_log_probs(self, decoder_out, extra, sample) -> torch.Tensor:
        """log P(w) fp32 [B, T, V] for every word under the settings."""
        settings = self.settings
        self._check_whole_batch(decoder_out, sample)
        scores = vocab.full_log_probs(self.decoder, decoder_out)
        retrieved = self._retrieve(extra["trime_query"], sample) if settings.uses_ext else None
        if settings.eval_scoring == "knnlm" and not settings.uses_cache:
            return knnlm_log_probs(scores, retrieved, settings.knn_lambda, settings.knn_temp)
        keys, d = self._span_keys(extra)
        if settings.eval_scoring == "knnlm":  # kNN-LM + continuous cache

            def score_rows(rows, vocab_rows, queries, memory_keys, key_labels, visibility):
                return knnlm_cache_log_probs(
                    vocab_rows, _rows_of(retrieved, rows), settings.knn_lambda, settings.knn_temp,
                    queries[..., d:], memory_keys[..., d:], key_labels, visibility,
                    settings.cache_lambda, settings.cache_theta)
        elif settings.eval_scoring == "cache":

            def score_rows(rows, vocab_rows, queries, memory_keys, key_labels, visibility):
                return cache_log_probs(vocab_rows, queries[..., d:], memory_keys[..., d:],
                                       key_labels, visibility, settings.cache_lambda,
                                       settings.cache_theta)
        else:

            def score_rows(rows, vocab_rows, queries, memory_keys, key_labels, visibility):
                return memory_log_probs(
                    vocab_rows, queries, memory_keys, key_labels, visibility, settings.memory_temp,
                    retrieved=_rows_of(retrieved, rows),
                    interp_lambda=settings.knn_lambda if retrieved is not None else 0.0,
                    interp_temperature=settings.knn_temp or 1.0,
                    interp_span=settings.knn_interp_memory == "eval")
        parts = self._over_span_memory(scores, keys, sample, score_rows)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def target_stats(self, decoder_out, extra, sample, temperatures):
        """(``TargetStats`` [B, T] of the memory sets the scoring reads, at these temperatures;
        the rank of the first retrieved entry labelled w* [B, T]: K if none, -1 without external
        memory). Sets: trime, every one (Eq. 6 over eval, span or ext; Eq. 9 over eval or ext);
        knnlm, the retrieved entries (and the cache with span memory); cache, the cache alone."""
        target = sample["target"]
        retrieved = self._retrieve(extra["trime_query"], sample) if self.settings.uses_ext else None
        if retrieved is None:
            first_hit = torch.full_like(target, -1)
        else:
            hits = retrieved.labels == target[..., None]
            first_hit = torch.where(hits.any(-1), hits.float().argmax(-1),
                                    torch.full_like(target, hits.shape[-1]))
        cache = (CACHE_SET,) if self.settings.uses_cache else ()
        sets = {"trime": MEMORY_SETS, "knnlm": ("ext",) + cache, "cache": cache}[self.settings.eval_scoring]
        stats = self._stats(decoder_out, extra, sample, temperatures, sets, retrieved)
        return stats, first_hit

    # -- shared steps ---------------------------------------------------------------

    def _stats(self, decoder_out, extra, sample, temperatures, sets, retrieved=None) -> TargetStats:
        self._check_whole_batch(decoder_out, sample)
        target = sample["target"]
        if self.settings.uses_ext and retrieved is None:
            retrieved = self._retrieve(extra["trime_query"], sample)
        target_score, log_z = vocab.eval_target_scores(self.decoder, decoder_out, target)
        keys, d = self._span_keys(extra)

        def score_rows(rows, vocab_rows, queries, memory_keys, key_labels, visibility):
            return memory_target_stats(vocab_rows.target_score, vocab_rows.log_z, queries[..., :d],
                                       memory_keys[..., :d], key_labels, visibility, target[rows],
                                       temperatures, _rows_of(retrieved, rows), sets,
                                       cache_queries=queries[..., d:], cache_keys=memory_keys[..., d:])

        parts = self._over_span_memory(_TargetVocab(target_score, log_z), keys, sample, score_rows)
        return parts[0] if len(parts) == 1 else TargetStats.cat(parts)

    def _span_keys(self, extra):
        """(keys of the span memory, d): g(c) [B, T, d], followed with the continuous cache by its
        h (--cache-key: the decoder's output features or g(c) again) as features [d:], so that one
        FIFO carries both; score_rows slice them apart."""
        g = extra["trime_query"]
        if not self.settings.uses_cache:
            return g, g.shape[-1]
        h = pick_key(self.settings.cache_key, extra.get("trime_final"), g)
        return torch.cat([g, h.to(g.dtype)], -1), g.shape[-1]

    def _over_span_memory(self, vocab_scores, keys, sample, score_rows):
        """score_rows(rows, vocab_scores[rows], queries, memory keys, their labels, visibility)
        over the batch: once with local memory (or none), or row by row in stream order with
        the long-memory FIFO. Returns the results in row order (one part, or one per row)."""
        target = sample["target"]
        labels, valid = memory_labels(sample["net_input"]["src_tokens"], target, self.pad)
        span = self.settings.span_memory
        if self.fifo is None:
            visibility = build_visibility("local", valid) if span == "local" else None
            return [score_rows(slice(None), vocab_scores, keys, keys, labels, visibility)]
        if "trime_label_offset" not in sample:
            raise ValueError("--eval-memory local,long needs the stream offsets that --task trime_lm "
                             "adds to evaluation batches (fairseq-eval-lm --task trime_lm).")
        return score_with_long_memory(vocab_scores, keys, labels, valid, target.ne(self.pad),
                                      sample["trime_label_offset"].to(target.device),
                                      sample["trime_doc"].to(target.device), self.fifo, score_rows)

    def _retrieve(self, queries, sample) -> RetrievedMemory:
        """kNN(M_ext, g(c)) for every scored position: one search for the whole batch;
        unscored positions (context, padding) get no entry."""
        target = sample["target"]
        scored = target.ne(self.pad)
        exclude = sample["trime_label_offset"].to(target.device)[scored] \
            if self.exclude_own_tokens else None
        found = self.retriever.search(queries[scored], exclude)
        K = found.sims.shape[-1]
        sims = queries.new_full((*target.shape, K), float("-inf"), dtype=torch.float32)
        labels = torch.zeros((*target.shape, K), dtype=torch.long, device=target.device)
        sims[scored], labels[scored] = found.sims, found.labels
        return RetrievedMemory(sims, labels)

    @staticmethod
    def _check_whole_batch(decoder_out, sample):
        if sample is None or tuple(sample["target"].shape) != tuple(decoder_out.shape[:2]):
            raise ValueError(
                "TRIME evaluation memory needs the whole batch at once, with its targets: leave "
                "fairseq-eval-lm's --softmax-batch at its default.")
