"""Shared fairseq glue: options, the g(c) hook, vocabulary scores from fairseq's output
layers, cross-worker gathering and the memory scorer. Used by the LM task (``trime.lm``)
and, beside it, by the translation one; calls the pure math in ``trime.core``."""
