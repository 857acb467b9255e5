"""Decoding with external memory in fairseq-generate: kNN-MT and TrimeMT_ext (paper §5.4).

``MemoryEnsemble`` is the ``EnsembleModel`` that fairseq's ``SequenceGenerator`` steps with
(``TrimeTranslationTask.build_generator`` hands it over): at every step it runs the decoder
incrementally with ``features_only=True``, takes the last position's key (the representation
the datastore was built with, ``meta["key_type"]``), searches the datastore once for every
hypothesis of the batch (all beams together), and returns the **full** next-token
log-distribution from the pure mixtures of ``trime.core.mixtures``:

- ``--eval-scoring knnlm`` = kNN-MT (Khandelwal et al., 2021): (1-λ) p_MT + λ p_kNN,
  p_kNN(w) ∝ Σ_{retrieved j, x_j = w} exp(sim_j / T) (``--knn-lambda``, ``--knn-temp``;
  sim = -‖q - k‖² with ``--knn-sim l2``, q·k/√d with ip);
- ``--eval-scoring trime`` = TrimeMT_ext: Eq. 6 with the retrieved entries joining the
  vocabulary in one softmax at τ = ``--memory-temp`` (sim = q·k/√d), then Eq. 9 with λ =
  ``--knn-lambda`` and P' over the retrieved entries at τ′ = ``--knn-temp`` (λ = 0: Eq. 6 alone).
  This is the paper's rule, normalised. The authors' release adds p_kNN to (1-λ)·p_MT with
  λ = Z_c/(Z_t + Z_c), which does not sum to 1 (``../shared/notes/mt_notes.md`` §1.4); it is
  not offered.

Nothing is cached across steps, so beam reordering needs nothing beyond fairseq's own.
"""

import torch
from fairseq.sequence_generator import EnsembleModel

from trime.core.mixtures import RetrievedMemory, knnlm_log_probs, memory_log_probs
from trime.glue.query import features_and_key


def step_log_probs(logits, queries, retriever, settings):
    """log P(w) fp32 [N, V] of one decoding step: ``logits`` [N, V] of the model, ``queries``
    [N, d] the keys of the N hypotheses, under ``settings`` (checked EvalSettings)."""
    retrieved = retriever.search(queries)
    retrieved = RetrievedMemory(retrieved.sims[None], retrieved.labels[None])
    scores = logits.float()[None]
    if settings.eval_scoring == "knnlm":
        return knnlm_log_probs(scores, retrieved, settings.knn_lambda, settings.knn_temp)[0]
    no_span = queries.new_zeros(1, 0, queries.shape[-1])
    return memory_log_probs(scores, queries[None], no_span, torch.zeros(1, 0, dtype=torch.long),
                            None, settings.memory_temp, retrieved=retrieved,
                            interp_lambda=settings.knn_lambda, interp_temperature=settings.knn_temp,
                            interp_span=False)[0]


class MemoryEnsemble(EnsembleModel):
    """One translation model whose next-token distribution uses the datastore."""

    def __init__(self, models, retriever, settings, key_type: str):
        if len(models) != 1:
            raise ValueError(f"decoding with --eval-memory ext takes one model, got {len(models)} "
                             "(--path a:b): ensembles are not supported with a datastore")
        super().__init__(models)
        self.retriever, self.settings, self.key_type = retriever, settings, key_type

    @torch.jit.unused
    def forward_decoder(self, tokens, encoder_outs, incremental_states, temperature: float = 1.0):
        model = self.models[0]
        kwargs = {"encoder_out": encoder_outs[0] if self.has_encoder() else None}
        if self.has_incremental_states():
            kwargs["incremental_state"] = incremental_states[0]
        features, extra, keys = features_and_key(
            model.decoder, lambda: model.decoder(tokens, features_only=True, **kwargs), self.key_type)
        queries = keys[:, -1]
        logits = model.decoder.output_layer(features[:, -1:])[:, 0] / temperature
        attn = extra.get("attn") if isinstance(extra, dict) else None
        attn = attn[0] if isinstance(attn, list) else attn
        if attn is not None:
            attn = attn[:, -1, :]
        return step_log_probs(logits, queries, self.retriever, self.settings), attn
