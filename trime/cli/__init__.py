"""Thin console scripts (``trime-*``) for what fairseq has no command for; ``harness`` is
the evaluation loop they share (fairseq's own eval-lm loop over a trime_lm task)."""
