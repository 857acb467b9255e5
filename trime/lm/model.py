"""A thin wrapper that lets TRIME see g(c) and score with memory inside fairseq.

``TrimeLanguageModel`` holds the wrapped language model's decoder under the same
attribute name (``decoder``), so its state dict has exactly the keys of the
original model: checkpoints of plain fairseq LMs load strictly, and checkpoints
trained with trime load in plain fairseq. It adds no parameters.

- ``forward`` adds ``extra["trime_query"]``: g(c) as [B, T, d]
  (``trime.glue.query.LastFFNInput``), and ``extra["trime_final"]``: the decoder's
  output features (the continuous cache's key).
- ``start_evaluation`` begins the scoring of a split (``trime.lm.evaluation``); then
  ``get_normalized_probs`` scores with the evaluation memory: only the targets for
  batches that say so (``fairseq-eval-lm``'s, see ``trime.glue.scorer``), the full
  distribution otherwise. It refuses to hand a non-finite log-probability of a target
  to fairseq (which would silently drop it from the perplexity).
"""

from fairseq.models import FairseqLanguageModel

import torch

from trime.glue import vocab
from trime.settings import EvalSettings
from trime.glue.query import LastFFNInput
from trime.glue.scorer import TARGETS_ONLY
from trime.lm.evaluation import SplitEvaluation


class TrimeLanguageModel(FairseqLanguageModel):
    """Wraps a fairseq language model (same decoder, same parameters).

    Args:
        inner: the fairseq language model.
        settings: the task's evaluation options (the default of ``start_evaluation``).
        retriever: the task's external memory, if ``settings`` use one.
    """

    def __init__(self, inner: FairseqLanguageModel, settings: EvalSettings = None, retriever=None):
        super().__init__(inner.decoder)
        self.query = LastFFNInput(inner.decoder)
        self.settings = settings or EvalSettings()
        self.retriever = retriever
        self.pad = inner.decoder.dictionary.pad()
        self.evaluation = None  # the SplitEvaluation being scored (start_evaluation)

    def start_evaluation(self, split: str, stream_tokens=None, meta: dict = None,
                         settings: EvalSettings = None, retriever=None) -> SplitEvaluation:
        """Begin scoring a split in stream order (a fresh FIFO, datastore writer, ...), under
        the task's settings and retriever unless others are given. Returns the evaluation."""
        self.evaluation = SplitEvaluation(self, settings or self.settings, split, stream_tokens,
                                          meta, retriever or self.retriever)
        return self.evaluation

    def forward(self, src_tokens, features_only=False, **kwargs):
        features, extra = self.decoder(src_tokens, features_only=True, **kwargs)
        extra = dict(extra or {})
        extra["trime_query"] = self.query.pop()
        extra["trime_final"] = features
        return (features if features_only else self.decoder.output_layer(features)), extra

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        decoder_out, extra = net_output[0], net_output[1]
        evaluation = self.evaluation
        settings = evaluation.settings if evaluation is not None else self.settings
        if evaluation is not None and "trime_query" in extra:
            evaluation.save_to_datastore(extra["trime_query"], sample)
        plain = settings.eval_memory == "none" or "trime_query" not in extra
        if not plain and evaluation is None:
            raise ValueError(f"--eval-memory {settings.eval_memory}: no evaluation started; "
                             "fairseq-eval-lm --task trime_lm starts one, API users call "
                             "model.start_evaluation(split, ...) before scoring")
        if sample is not None and sample.get(TARGETS_ONLY) and "trime_query" in extra:
            # the consumer reads only each target's entry (fairseq-eval-lm): computed for the
            # targets alone (without memory: in chunks of positions) and broadcast over the
            # vocabulary, so no [tokens × V] tensor is made
            if plain:
                target_score, log_z = vocab.eval_target_scores(self.decoder, decoder_out,
                                                               sample["target"])
                target_log_probs = target_score - log_z
            else:
                target_log_probs = evaluation.scorer.target_log_probs(decoder_out, extra, sample)
            probs = target_log_probs[..., None].expand(*target_log_probs.shape,
                                                       len(self.decoder.dictionary))
        elif plain:
            probs = super().get_normalized_probs(net_output, log_probs=True, sample=sample).float()
        else:
            probs = evaluation.scorer.full_log_probs(decoder_out, extra, sample)
        self._refuse_non_finite(probs, sample, decoder_out.shape[:2])
        return probs if log_probs else probs.exp()

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
