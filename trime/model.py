"""A thin wrapper that lets TRIME see g(c) and score Eq. 6 inside fairseq.

``TrimeLanguageModel`` holds the wrapped language model's decoder under the same
attribute name (``decoder``), so its state dict has exactly the keys of the
original model: checkpoints of plain fairseq LMs load strictly, and checkpoints
trained with trime load in plain fairseq. It adds no parameters.

- ``forward`` adds ``extra["trime_query"]``: g(c), the input of the last
  decoder layer's first FFN projection (``fc1``), i.e. after that layer's
  LayerNorm in pre-norm models (paper §3), as [B, T, d].
- ``get_normalized_probs`` returns Eq. 6 with local memory when evaluation
  memory is enabled (``fairseq-eval-lm --eval-memory local``), and refuses to
  hand a non-finite log-probability of a target to fairseq (which would silently
  drop it from the perplexity).
"""

import torch
from fairseq.models import FairseqLanguageModel

from trime import vocab
from trime.loss import memory_log_probs
from trime.memory import build_visibility, memory_labels


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

    def __init__(self, inner: FairseqLanguageModel, eval_memory: str = "none",
                 memory_temp: float = 1.0):
        super().__init__(inner.decoder)
        self.query = LastFFNInput(inner.decoder)
        self.eval_memory = eval_memory
        self.memory_temp = memory_temp
        self.pad = inner.decoder.dictionary.pad()

    def forward(self, src_tokens, **kwargs):
        features, extra = self.decoder(src_tokens, **kwargs)
        extra = dict(extra or {})
        extra["trime_query"] = self.query.pop()
        return features, extra

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        decoder_out, extra = net_output[0], net_output[1]
        if self.eval_memory == "none" or "trime_query" not in extra:
            probs = super().get_normalized_probs(net_output, log_probs=True, sample=sample).float()
        else:
            probs = self._memory_log_probs(decoder_out, extra["trime_query"], sample)
        self._refuse_non_finite(probs, sample, decoder_out.shape[:2])
        return probs if log_probs else probs.exp()

    def _memory_log_probs(self, decoder_out, query, sample):
        if sample is None or tuple(sample["target"].shape) != tuple(decoder_out.shape[:2]):
            raise ValueError(
                "TRIME evaluation memory needs the whole batch at once: leave "
                "fairseq-eval-lm's --softmax-batch at its default."
            )
        scores = vocab.full_scores(self.decoder, decoder_out)
        labels, valid = memory_labels(sample["net_input"]["src_tokens"], sample["target"], self.pad)
        visibility = build_visibility(self.eval_memory, valid)
        return memory_log_probs(scores, query, query, labels, visibility, self.memory_temp)

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
