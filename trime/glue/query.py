"""g(c), TRIME's key and query (paper §3): the input of the last decoder layer's FFN; and the
choice of decoder representation wherever a key can be another one (``DECODER_KEYS``).

A forward pre-hook on ``decoder.layers[-1].fc1`` captures g(c), i.e. after that layer's
LayerNorm in pre-norm models; the hook adds no parameters, so checkpoints stay plain
fairseq checkpoints. Works for any fairseq Transformer decoder (LM or translation).
"""

from contextlib import contextmanager

import torch

from trime.settings import DECODER_KEYS


def last_ffn(decoder) -> torch.nn.Module:
    """``decoder.layers[-1].fc1``, whose input is g(c); a clear error if there is none."""
    layers = getattr(decoder, "layers", None)
    last = layers[-1] if layers is not None and len(layers) > 0 else None
    if last is None or not isinstance(getattr(last, "fc1", None), torch.nn.Module):
        raise ValueError(
            f"TRIME needs g(c) = the input of the last decoder layer's feed-forward block, "
            f"but {type(decoder).__name__} has no `layers[-1].fc1` to hook. Use a fairseq "
            "Transformer LM (e.g. --arch transformer_lm), whose decoder layers have an FFN."
        )
    return last.fc1


class LastFFNInput:
    """Captures the input of ``decoder.layers[-1].fc1`` with a forward pre-hook."""

    def __init__(self, decoder):
        fc1 = last_ffn(decoder)
        self.captured = None
        self.dim = fc1.in_features  # d, the dimension of g(c)
        self.handle = fc1.register_forward_pre_hook(self._hook)

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


@contextmanager
def capturing_last_ffn_input(decoder):
    """``LastFFNInput`` for the forward passes inside the block; the hook is removed on exit,
    so the model is left as it was (for a criterion, which does not own the model)."""
    capture = LastFFNInput(decoder)
    try:
        yield capture
    finally:
        capture.handle.remove()


def _checked(which: str) -> str:
    if which not in DECODER_KEYS:
        raise ValueError(f"unknown decoder key {which!r}: one of {', '.join(DECODER_KEYS)}")
    return which


def pick_key(which: str, final, last_ffn_input):
    """The representation ``which`` (one of ``DECODER_KEYS``) of the two a decoder pass gave."""
    return final if _checked(which) == "final" else last_ffn_input


def features_and_key(decoder, forward, which: str):
    """(features [B, T, C], extra, keys [B, T, d]) of one decoder pass, keys the representation
    ``which``: ``forward()`` runs the decoder with ``features_only=True`` and returns its
    (features, extra); g(c) is captured only when it is the key."""
    if _checked(which) == "last-ffn-input":
        with capturing_last_ffn_input(decoder) as capture:
            features, extra = forward()
        return features, extra, capture.pop()
    features, extra = forward()
    return features, extra, features
