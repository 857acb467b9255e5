"""Evaluation with long memory: score input rows in stream order with a FIFO (§4.2).

``score_with_long_memory`` scores each row of a batch against its own window
(local memory) plus the FIFO of earlier scored positions
(``trime.memory.WindowAndFifoMemory``), then pushes the row's scored positions
into the FIFO. ``combine`` turns (vocabulary scores, memory) into a
log-distribution: Eq. 6 (``trime.loss.memory_log_probs``) or the continuous
cache (``trime.loss.cache_log_probs``).
"""

from typing import Callable

import torch

from trime.memory import FifoMemory, WindowAndFifoMemory


def score_with_long_memory(vocab_scores: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor,
                           valid: torch.Tensor, scored: torch.Tensor, label_offsets: torch.Tensor,
                           docs: torch.Tensor, fifo: FifoMemory, combine: Callable) -> torch.Tensor:
    """combine's result [B, T, ...] (log-distributions [B, T, V]) for rows that are
    consecutive windows of the stream.

    Args:
        vocab_scores: [B, T, V] unnormalised vocabulary scores.
        keys: [B, T, d] memory representation of every position (also the query).
        labels, valid: [B, T] next token of each position and whether it can be memory.
        scored: [B, T] positions whose target is scored (they enter the FIFO afterwards).
        label_offsets: [B, T] stream offset of each position's label token.
        docs: [B, T] document id of each position's label token.
        fifo: the FifoMemory carried from batch to batch (updated in place).
        combine: f(rows, vocab_scores [1,T,V], queries, keys, key_labels, visibility) -> [1,T,...],
            rows = the slice of the batch being scored.
    """
    out = None  # [B, T, ...] like combine's result (a distribution, or trime-tune statistics)
    # rows in stream order (a batch of consecutive segments arrives that way already)
    for row in torch.argsort(label_offsets[:, 0]).tolist():
        visibility = WindowAndFifoMemory(valid[row:row + 1], docs[row:row + 1], fifo,
                                         window_start=int(label_offsets[row, 0]))
        row_keys = keys[row:row + 1]
        if len(fifo):
            memory_keys = torch.cat([fifo.keys[None].to(row_keys.dtype), row_keys], dim=1)
            memory_labels = torch.cat([fifo.labels[None], labels[row:row + 1]], dim=1)
        else:
            memory_keys, memory_labels = row_keys, labels[row:row + 1]
        result = combine(slice(row, row + 1), vocab_scores[row:row + 1], row_keys,
                         memory_keys, memory_labels, visibility)
        if out is None:
            out = result.new_empty((vocab_scores.shape[0], *result.shape[1:]))
        out[row:row + 1] = result
        pushed = scored[row]
        fifo.append(keys[row][pushed], labels[row][pushed], label_offsets[row][pushed], docs[row][pushed])
    return out
