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

from dataclasses import dataclass

import torch
from fairseq.models import FairseqLanguageModel

from trime import vocab
from trime.loss import cache_log_probs, memory_log_probs
from trime.memory import FifoMemory, build_visibility, memory_labels
from trime.scoring import score_with_long_memory


@dataclass
class EvalSettings:
    """How ``fairseq-eval-lm`` scores with memory (the task's --eval-* options), checked."""

    memory: str = "none"          # none | local | local,long
    temperature: float = 1.0      # τ of Eq. 6
    long_memory_size: int = 0     # S
    reset_at_documents: bool = True
    scoring: str = "trime"        # trime (Eq. 6) | cache (Grave et al. 2017)
    cache_lambda: float = 0.1
    cache_theta: float = 0.3
    cache_key: str = "final"      # final | last-ffn-input

    def __post_init__(self):
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

    @classmethod
    def from_args(cls, args):
        return cls(str(args.eval_memory), args.memory_temp, args.long_memory_size,
                   str(args.long_memory_reset) == "document", str(args.eval_scoring),
                   args.cache_lambda, args.cache_theta, str(args.cache_key))

    def describe(self) -> str:
        text = f"eval memory = {self.memory}"
        if "long" in self.memory:
            text += (f" (FIFO of {self.long_memory_size} tokens, "
                     f"{'reset at each document' if self.reset_at_documents else 'never reset'})")
        if self.scoring == "cache":
            return text + (f", continuous cache lambda = {self.cache_lambda}, "
                           f"theta = {self.cache_theta}, h = {self.cache_key}")
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

    def reset_long_memory(self):
        self.fifo = None

    def forward(self, src_tokens, features_only=False, **kwargs):
        features, extra = self.decoder(src_tokens, features_only=True, **kwargs)
        extra = dict(extra or {})
        extra["trime_query"] = self.query.pop()
        extra["trime_final"] = features
        return (features if features_only else self.decoder.output_layer(features)), extra

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        decoder_out, extra = net_output[0], net_output[1]
        if self.settings.memory == "none" or "trime_query" not in extra:
            probs = super().get_normalized_probs(net_output, log_probs=True, sample=sample).float()
        else:
            probs = self._memory_log_probs(decoder_out, extra, sample)
        self._refuse_non_finite(probs, sample, decoder_out.shape[:2])
        return probs if log_probs else probs.exp()

    def _memory_log_probs(self, decoder_out, extra, sample):
        if sample is None or tuple(sample["target"].shape) != tuple(decoder_out.shape[:2]):
            raise ValueError(
                "TRIME evaluation memory needs the whole batch at once: leave "
                "fairseq-eval-lm's --softmax-batch at its default."
            )
        settings = self.settings
        scores = vocab.full_scores(self.decoder, decoder_out)
        target = sample["target"]
        labels, valid = memory_labels(sample["net_input"]["src_tokens"], target, self.pad)
        if settings.scoring == "cache":
            keys = extra["trime_final"] if settings.cache_key == "final" else extra["trime_query"]

            def combine(s, q, k, l, vis):
                return cache_log_probs(s, q, k, l, vis, settings.cache_lambda, settings.cache_theta)
        else:
            keys = extra["trime_query"]

            def combine(s, q, k, l, vis):
                return memory_log_probs(s, q, k, l, vis, settings.temperature)

        if "long" not in settings.memory:
            return combine(scores, keys, keys, labels, build_visibility("local", valid))
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
