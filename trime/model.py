"""A thin wrapper that lets TRIME see g(c) and score Eq. 6 inside fairseq.

``TrimeLanguageModel`` holds the wrapped language model's decoder under the same
attribute name (``decoder``), so its state dict has exactly the keys of the
original model: checkpoints of plain fairseq LMs load strictly, and checkpoints
trained with trime load in plain fairseq. It adds no parameters.

- ``forward`` adds ``extra["trime_query"]``: g(c), the input of the last
  decoder layer's first FFN projection (``fc1``), i.e. after that layer's
  LayerNorm in pre-norm models (paper §3), as [B, T, d].
- ``get_normalized_probs`` returns Eq. 6 (or the continuous cache) with local
  memory, or local + long memory, when evaluation memory is enabled
  (``fairseq-eval-lm --eval-memory local[,long]``), and refuses to hand a
  non-finite log-probability of a target to fairseq (which would silently drop
  it from the perplexity).
"""

import logging
import sys
from dataclasses import dataclass
from typing import Optional

import torch
from fairseq.models import FairseqLanguageModel

from trime import vocab
from trime.loss import (STAT_SETS, RetrievedMemory, cache_log_probs, knnlm_log_probs,
                        memory_log_probs, memory_target_stats, target_log_prob_from_stats)
from trime.memory import FifoMemory, build_visibility, memory_labels
from trime.scoring import score_with_long_memory

logger = logging.getLogger(__name__)


EVAL_MEMORIES = ("none", "local", "local,long", "ext", "local,ext", "local,long,ext")
KNN_DEFAULTS = {  # (similarity, lambda, temperature) when not given
    "knnlm": ("l2", 0.25, 1.0),  # Khandelwal et al. (2020)
    "trime": ("ip", 0.3, 1.0),   # TRIME's sim (§3); λ = 0.3 as in the authors' release; tune τ'
}


@dataclass
class EvalSettings:
    """How ``fairseq-eval-lm`` scores with memory (the task's --eval-* / --knn-* options), checked."""

    memory: str = "none"          # one of EVAL_MEMORIES
    temperature: float = 1.0      # τ of Eq. 6
    long_memory_size: int = 0     # S
    reset_at_documents: bool = True
    scoring: str = "trime"        # trime (Eq. 6) | cache (Grave et al. 2017) | knnlm
    cache_lambda: float = 0.1
    cache_theta: float = 0.3
    cache_key: str = "final"      # final | last-ffn-input
    dstore: Optional[str] = None  # external memory (datastore folder)
    knn_k: int = 1024
    knn_nprobe: int = 32
    knn_sim: Optional[str] = None      # ip | l2; None: by scoring (KNN_DEFAULTS)
    knn_lambda: Optional[float] = None  # λ of Eq. 9 / kNN-LM
    knn_temp: Optional[float] = None    # τ' of Eq. 8 / T of kNN-LM
    knn_exact_scores: bool = False
    knn_interp_memory: str = "eval"    # P' of Eq. 8 over M_eval, or the retrieved entries only
    save_dstore: Optional[str] = None
    full_distribution: bool = False     # compute all of [B, T, V], not only the targets (API)

    def __post_init__(self):
        if self.memory not in EVAL_MEMORIES:
            raise ValueError(f"--eval-memory must be one of {EVAL_MEMORIES}, got {self.memory!r}")
        if self.temperature <= 0:
            raise ValueError(f"--memory-temp must be > 0, got {self.temperature}")
        if self.long_memory_size < 0:
            raise ValueError(f"--long-memory-size must be >= 0 (tokens kept in the FIFO), "
                             f"got {self.long_memory_size}")
        if self.scoring == "cache" and self.memory == "none":
            raise ValueError("--eval-scoring cache needs a memory to cache: add --eval-memory local "
                             "(or local,long)")
        if self.scoring == "cache" and not (0 <= self.cache_lambda < 1 and self.cache_theta > 0):
            raise ValueError(f"--cache-lambda must be in [0, 1) and --cache-theta > 0, got "
                             f"{self.cache_lambda} and {self.cache_theta}")
        if self.scoring == "cache" and self.uses_ext:
            raise ValueError("--eval-scoring cache does not use external memory: for a datastore "
                             "with a model trained without TRIME use --eval-scoring knnlm")
        if self.scoring == "knnlm" and self.memory != "ext":
            raise ValueError("--eval-scoring knnlm (kNN-LM) interpolates the LM with the external "
                             f"datastore only: use --eval-memory ext (got {self.memory!r})")
        if self.uses_ext and not self.dstore:
            raise ValueError(f"--eval-memory {self.memory} needs --dstore DIR (a datastore from "
                             "fairseq-eval-lm --save-dstore, indexed with trime-build-index)")
        if self.dstore and not self.uses_ext:
            raise ValueError(f"--dstore is only used with external memory: add ext to --eval-memory "
                             f"(e.g. --eval-memory local,long,ext), got {self.memory!r}")
        if self.uses_ext:
            sim, lam, temp = KNN_DEFAULTS[self.scoring]
            self.knn_sim = self.knn_sim or sim
            self.knn_lambda = lam if self.knn_lambda is None else self.knn_lambda
            self.knn_temp = temp if self.knn_temp is None else self.knn_temp
            if self.knn_sim not in ("ip", "l2"):
                raise ValueError(f"--knn-sim must be ip or l2, got {self.knn_sim!r}")
            if not 0 <= self.knn_lambda < 1:
                raise ValueError(f"--knn-lambda must be in [0, 1), got {self.knn_lambda}")
            if self.knn_temp <= 0:
                raise ValueError(f"--knn-temp must be > 0, got {self.knn_temp}")
            if self.knn_k < 1 or self.knn_nprobe < 1:
                raise ValueError(f"--knn-k and --knn-nprobe must be >= 1, got {self.knn_k} and "
                                 f"{self.knn_nprobe}")
            if self.knn_interp_memory not in ("eval", "ext"):
                raise ValueError(f"--knn-interp-memory must be eval or ext, got {self.knn_interp_memory!r}")
        elif (self.knn_sim, self.knn_lambda, self.knn_temp) != (None, None, None) or self.knn_exact_scores:
            raise ValueError("--knn-sim / --knn-lambda / --knn-temp / --knn-exact-scores apply to "
                             "external memory only: add ext to --eval-memory and give --dstore")

    @property
    def uses_ext(self) -> bool:
        return "ext" in self.memory.split(",")

    @property
    def span_memory(self) -> str:
        """The memory scored from the input itself: none | local | local,long."""
        return ",".join(m for m in self.memory.split(",") if m != "ext") or "none"

    @classmethod
    def from_args(cls, args):
        def opt(name, default=None):
            return getattr(args, name, default)

        return cls(str(args.eval_memory), args.memory_temp, args.long_memory_size,
                   str(args.long_memory_reset) == "document", str(args.eval_scoring),
                   args.cache_lambda, args.cache_theta, str(args.cache_key),
                   opt("dstore"), opt("knn_k", 1024), opt("knn_nprobe", 32), opt("knn_sim"),
                   opt("knn_lambda"), opt("knn_temp"), bool(opt("knn_exact_scores", False)),
                   str(opt("knn_interp_memory", "eval")), opt("save_dstore"))

    def describe(self) -> str:
        text = f"eval memory = {self.memory}"
        if "long" in self.memory:
            text += (f" (FIFO of {self.long_memory_size} tokens, "
                     f"{'reset at each document' if self.reset_at_documents else 'never reset'})")
        if self.uses_ext:
            text += (f", datastore {self.dstore} (K = {self.knn_k}, nprobe = {self.knn_nprobe}, "
                     f"sim = {self.knn_sim}{', exact scores' if self.knn_exact_scores else ''})")
        if self.save_dstore:
            text += f", saving a datastore to {self.save_dstore}"
        if self.scoring == "cache":
            return text + (f", continuous cache lambda = {self.cache_lambda}, "
                           f"theta = {self.cache_theta}, h = {self.cache_key}")
        if self.scoring == "knnlm":
            return text + f", kNN-LM lambda = {self.knn_lambda}, T = {self.knn_temp}"
        if self.uses_ext:
            text += (f", then (1-lambda) P + lambda P' with lambda = {self.knn_lambda}, "
                     f"tau' = {self.knn_temp} over {'M_eval' if self.knn_interp_memory == 'eval' else 'the retrieved entries'}")
        return text + f", tau = {self.temperature}"


class LastFFNInput:
    """Captures the input of ``decoder.layers[-1].fc1`` with a forward pre-hook."""

    def __init__(self, decoder):
        layers = getattr(decoder, "layers", None)
        last = layers[-1] if layers is not None and len(layers) > 0 else None
        if last is None or not isinstance(getattr(last, "fc1", None), torch.nn.Module):
            raise ValueError(
                f"TRIME needs g(c) = the input of the last decoder layer's feed-forward block, "
                f"but {type(decoder).__name__} has no `layers[-1].fc1` to hook. Use a fairseq "
                "Transformer LM (e.g. --arch transformer_lm), whose decoder layers have an FFN."
            )
        self.captured = None
        self.handle = last.fc1.register_forward_pre_hook(self._hook)

    def _hook(self, module, inputs):
        self.captured = inputs[0]

    def pop(self) -> torch.Tensor:
        captured, self.captured = self.captured, None
        if captured is None:
            raise RuntimeError(
                "the last decoder layer's FFN did not run in this forward pass, so g(c) is "
                "missing; TRIME does not support --decoder-layerdrop (the last layer may be skipped)."
            )
        return captured.transpose(0, 1)  # T x B x C -> B x T x C


class TrimeLanguageModel(FairseqLanguageModel):
    """Wraps a fairseq language model (same decoder, same parameters)."""

    def __init__(self, inner: FairseqLanguageModel, settings: EvalSettings = None):
        super().__init__(inner.decoder)
        self.query = LastFFNInput(inner.decoder)
        self.settings = settings or EvalSettings()
        self.pad = inner.decoder.dictionary.pad()
        self.fifo = None  # long memory, carried from batch to batch (reset_long_memory)
        self.retriever = None  # external memory (attach_external_memory)
        self.exclude_own_tokens = False  # the datastore holds the split being evaluated
        self.dstore_writer = None  # --save-dstore (begin_split)

    @property
    def query_dim(self) -> int:
        return self.decoder.layers[-1].fc1.in_features

    def reset_long_memory(self):
        self.fifo = None

    def attach_external_memory(self, retriever):
        self.retriever = retriever

    def begin_split(self, split: str, stream_tokens, meta: dict = None):
        """Called before a split is scored in stream order (``trime_lm.eval_lm_dataloader``)."""
        from trime.datastore import DatastoreWriter, model_fingerprint, stream_checksum

        self.reset_long_memory()
        fingerprint = model_fingerprint(self.decoder) \
            if self.retriever is not None or self.settings.save_dstore else None
        if self.retriever is not None:
            datastore = self.retriever.datastore
            self.exclude_own_tokens = (datastore.meta.get("values_checksum")
                                       == stream_checksum(stream_tokens))
            if datastore.meta.get("model_fingerprint") != fingerprint:
                logger.warning(f"TRIME: the datastore {datastore.path} was built with other model "
                               "weights than this checkpoint: its keys live in another space "
                               "unless that is intended (rebuild it with --save-dstore)")
            if self.exclude_own_tokens:
                logger.info(f"TRIME: the datastore was built from this split ({split}): each "
                            "token's own entry is excluded from its retrieved neighbours")
        if self.settings.save_dstore:
            dictionary = self.decoder.dictionary
            self.dstore_writer = DatastoreWriter(self.settings.save_dstore, len(stream_tokens),
                                                 self.query_dim, dict(
                meta or {}, split=split, dictionary_size=len(dictionary),
                dictionary_checksum=vocab.dictionary_checksum(dictionary),
                model_fingerprint=fingerprint, command=" ".join(sys.argv)))

    def forward(self, src_tokens, features_only=False, **kwargs):
        features, extra = self.decoder(src_tokens, features_only=True, **kwargs)
        extra = dict(extra or {})
        extra["trime_query"] = self.query.pop()
        extra["trime_final"] = features
        return (features if features_only else self.decoder.output_layer(features)), extra

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        decoder_out, extra = net_output[0], net_output[1]
        if self.dstore_writer is not None and "trime_query" in extra:
            self._save_to_datastore(extra["trime_query"], sample)
        if self.settings.memory == "none" or "trime_query" not in extra:
            probs = super().get_normalized_probs(net_output, log_probs=True, sample=sample).float()
        else:
            probs = self._memory_log_probs(decoder_out, extra, sample)
        self._refuse_non_finite(probs, sample, decoder_out.shape[:2])
        return probs if log_probs else probs.exp()

    def _save_to_datastore(self, queries, sample):
        if sample is None or "trime_label_offset" not in sample:
            raise ValueError("--save-dstore needs the stream offsets that --task trime_lm adds to "
                             "evaluation batches (fairseq-eval-lm --task trime_lm)")
        target = sample["target"]
        scored = target.ne(self.pad)
        self.dstore_writer.add(sample["trime_label_offset"].to(target.device)[scored],
                               queries[scored], target[scored])
        if self.dstore_writer.complete:
            self.dstore_writer = None

    def _retrieve(self, queries, target, sample) -> RetrievedMemory:
        """kNN(M_ext, g(c)) for every scored position: one FAISS search for the whole batch;
        unscored positions (context, padding) get no entry."""
        if self.retriever is None:
            raise ValueError("--eval-memory ...,ext: no external memory attached to the model "
                             "(evaluate with fairseq-eval-lm --task trime_lm --dstore DIR)")
        scored = target.ne(self.pad)
        exclude = None
        if self.exclude_own_tokens:
            exclude = sample["trime_label_offset"].to(target.device)[scored]
        found = self.retriever.search(queries[scored], exclude)
        K = found.sims.shape[-1]
        sims = queries.new_full((*target.shape, K), float("-inf"), dtype=torch.float32)
        labels = torch.zeros((*target.shape, K), dtype=torch.long, device=target.device)
        sims[scored], labels[scored] = found.sims, found.labels
        return RetrievedMemory(sims, labels)

    def target_statistics(self, net_output, sample, temperatures):
        """Per-token ``trime.loss.memory_target_stats`` [B, T, 2 + 6·len(temperatures)] under
        the current settings' memories (trime-tune), plus the rank of the first retrieved entry
        labelled w* [B, T] (K if none; -1 without external memory)."""
        target = sample["target"]
        retrieved = self._retrieve(net_output[1]["trime_query"], target, sample) \
            if self.settings.uses_ext else None
        if retrieved is None:
            first_hit = torch.full_like(target, -1)
        else:
            hits = retrieved.labels == target[..., None]
            first_hit = torch.where(hits.any(-1), hits.float().argmax(-1),
                                    torch.full_like(target, hits.shape[-1]))
        stats = self._memory_log_probs(net_output[0], net_output[1], sample, temperatures, retrieved)
        return stats, first_hit

    def _memory_log_probs(self, decoder_out, extra, sample, stats_temperatures=None,
                          retrieved=None):
        """Log-probabilities [B, T, V] with memory. fairseq's scorers read only each target's
        entry (fairseq's adaptive softmax computes only the targets' clusters too), so unless
        ``settings.full_distribution`` is set, only log P(w*) is computed (from per-token
        statistics, as trime-tune does) and returned broadcast over V; the continuous cache
        always builds the full distribution. ``stats_temperatures``: return the statistics;
        ``retrieved``: the external memory entries, if already searched."""
        if sample is None or tuple(sample["target"].shape) != tuple(decoder_out.shape[:2]):
            raise ValueError(
                "TRIME evaluation memory needs the whole batch at once: leave "
                "fairseq-eval-lm's --softmax-batch at its default."
            )
        settings = self.settings
        target = sample["target"]
        if settings.uses_ext and retrieved is None:
            retrieved = self._retrieve(extra["trime_query"], target, sample)
        labels, valid = memory_labels(sample["net_input"]["src_tokens"], target, self.pad)
        keys = extra["trime_query"]

        def rows_of(retrieved, rows):
            return None if retrieved is None else \
                RetrievedMemory(retrieved.sims[rows], retrieved.labels[rows])

        full = settings.scoring == "cache" or (settings.full_distribution and stats_temperatures is None)
        if full:
            scores = vocab.full_log_probs(self.decoder, decoder_out)
            if settings.scoring == "knnlm":
                return knnlm_log_probs(scores, retrieved, settings.knn_lambda, settings.knn_temp)
            if settings.scoring == "cache":
                keys = extra["trime_final"] if settings.cache_key == "final" else keys

                def combine(rows, s, q, k, l, vis):
                    return cache_log_probs(s, q, k, l, vis, settings.cache_lambda,
                                           settings.cache_theta)
            else:
                def combine(rows, s, q, k, l, vis):
                    return memory_log_probs(
                        s, q, k, l, vis, settings.temperature, retrieved=rows_of(retrieved, rows),
                        interp_lambda=settings.knn_lambda if retrieved is not None else 0.0,
                        interp_temperature=settings.knn_temp or 1.0,
                        interp_span=settings.knn_interp_memory == "eval")
        else:
            target_score, log_z = vocab.eval_target_scores(self.decoder, decoder_out, target)
            scores = torch.stack([target_score, log_z], -1)  # [B, T, 2], sliced per row
            temperatures = stats_temperatures or sorted({settings.temperature,
                                                         settings.knn_temp or 1.0})
            sets = STAT_SETS if stats_temperatures else \
                ("ext",) if settings.scoring == "knnlm" else ("ext", "eval")

            def combine(rows, s, q, k, l, vis):
                return memory_target_stats(s[..., 0], s[..., 1], q, k, l, vis, target[rows],
                                           temperatures, rows_of(retrieved, rows), sets)

        stats_or_log_probs = self._score_rows(scores, keys, labels, valid, target, sample, combine)
        if full or stats_temperatures is not None:
            return stats_or_log_probs
        target_log_probs = target_log_prob_from_stats(
            stats_or_log_probs, temperatures, settings.scoring, settings.temperature,
            settings.knn_lambda or 0.0, settings.knn_temp or 1.0, settings.knn_interp_memory)
        return target_log_probs[..., None].expand(*target.shape, len(self.decoder.dictionary))

    def _score_rows(self, scores, keys, labels, valid, target, sample, combine):
        """combine(rows, scores, queries, keys, key_labels, visibility) over the batch with
        local memory (or none), or row by row in stream order with the long-memory FIFO."""
        settings = self.settings
        span = settings.span_memory
        if "long" not in span:
            visibility = build_visibility("local", valid) if span == "local" else None
            return combine(slice(None), scores, keys, keys, labels, visibility)
        if "trime_label_offset" not in sample:
            raise ValueError("--eval-memory local,long needs the stream offsets that --task trime_lm "
                             "adds to evaluation batches (fairseq-eval-lm --task trime_lm).")
        if self.fifo is None:
            self.fifo = FifoMemory(settings.long_memory_size, settings.reset_at_documents)
        return score_with_long_memory(scores, keys, labels, valid, target.ne(self.pad),
                                      sample["trime_label_offset"].to(target.device),
                                      sample["trime_doc"].to(target.device), self.fifo, combine)

    def _refuse_non_finite(self, log_probs, sample, batch_shape):
        if sample is None or tuple(sample["target"].shape) != tuple(batch_shape):
            return
        target = sample["target"]
        target_log_probs = log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        bad = ~torch.isfinite(target_log_probs) & target.ne(self.pad)
        if bad.any():
            raise FloatingPointError(
                f"{int(bad.sum())} target token(s) got a non-finite log-probability "
                f"(e.g. {target_log_probs[bad][0].item()}); fairseq-eval-lm would silently drop "
                "them and report a better perplexity. Check the checkpoint (NaN weights?) and "
                "evaluate in fp32."
            )
