"""The decoder representation that is TRIME's query and key in translation (``--mt-key``).

One place for the loss (``trime.mt.criterion``), the datastore (``trime.mt.datastore``) and
decoding (``trime.mt.generation``): ``final`` = the decoder output that feeds the output
projection (after the final LayerNorm; the authors' MT code and most kNN-MT code),
``last-ffn-input`` = the input of the last decoder layer's FFN (paper Appendix C's g, the LM's).
"""

from trime.glue.query import capturing_last_ffn_input

MT_KEYS = ("final", "last-ffn-input")


def features_and_keys(decoder, forward, mt_key: str):
    """(features [B, T, C], extra, keys [B, T, d]) of one decoder pass: ``forward()`` runs the
    decoder with ``features_only=True`` and returns its (features, extra)."""
    if mt_key == "last-ffn-input":
        with capturing_last_ffn_input(decoder) as capture:
            features, extra = forward()
        return features, extra, capture.pop()
    if mt_key != "final":
        raise ValueError(f"unknown --mt-key {mt_key!r}: one of {', '.join(MT_KEYS)}")
    features, extra = forward()
    return features, extra, features
