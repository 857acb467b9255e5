"""Evaluation with long memory: a FIFO of scored positions, rows scored in stream order (§4.2).

``FifoMemory`` holds the (key, next token) pairs of the last S scored positions of
the current document. ``score_with_long_memory`` scores each row of a batch against
its own window (local memory) plus the FIFO entries before it
(``trime.core.visibility.WindowAndFifoMemory``), then pushes the row's scored
positions into the FIFO. ``combine`` turns (vocabulary scores, memory) into what
the caller wants: a log-distribution (``trime.core.mixtures``) or the target
statistics (``trime.core.target_stats``).
"""

from typing import Callable, List

import torch

from trime.core.visibility import WindowAndFifoMemory


class FifoMemory:
    """Evaluation-time long memory (§4.2): the last ``size`` scored positions of the document.

    Holds keys [N, d], labels [N], stream offsets [N] (of each entry's label
    token) and document ids [N], oldest first. With ``reset_at_documents`` the
    memory is emptied when a new document starts (otherwise it runs across
    documents, as the authors' evaluation on the concatenated stream did).
    """

    def __init__(self, size: int, reset_at_documents: bool = True):
        if size < 0:
            raise ValueError(f"the long-memory size must be >= 0, got {size}")
        self.size = size
        self.reset_at_documents = reset_at_documents
        self.keys = self.labels = self.offsets = self.docs = None

    def __len__(self) -> int:
        return 0 if self.labels is None else len(self.labels)

    def state(self) -> dict:
        """What the FIFO holds, as a dict of tensors (to save a pass and resume it)."""
        return {"keys": self.keys, "labels": self.labels, "offsets": self.offsets, "docs": self.docs}

    def load_state(self, state: dict) -> None:
        """Hold what ``state()`` returned (the size and reset rule are this FIFO's own)."""
        self.keys, self.labels, self.offsets, self.docs = (state[name] for name in
                                                           ("keys", "labels", "offsets", "docs"))

    def append(self, keys, labels, offsets, docs):
        """Add scored positions (in stream order), then keep the last ``size`` of the document."""
        if len(labels) == 0:
            return
        if len(self) and int(offsets[0]) <= int(self.offsets[-1]):
            raise ValueError(
                "long memory needs the evaluation data in stream order, but a position at offset "
                f"{int(offsets[0])} came after offset {int(self.offsets[-1])}: score the split in "
                "one process, batches in stream order."
            )
        if len(self):
            keys = torch.cat([self.keys, keys.to(self.keys.dtype)])
            labels, offsets, docs = (torch.cat([a, b]) for a, b in
                                     ((self.labels, labels), (self.offsets, offsets), (self.docs, docs)))
        # keep a suffix: the entries of the newest document (with reset), at most `size`
        start = max(len(labels) - self.size, 0)
        if self.reset_at_documents:
            start = max(start, int(torch.searchsorted(docs, docs[-1:]).item()))
        self.keys, self.labels, self.offsets, self.docs = keys[start:], labels[start:], offsets[start:], docs[start:]


def score_with_long_memory(vocab_scores: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor,
                           valid: torch.Tensor, scored: torch.Tensor, label_offsets: torch.Tensor,
                           docs: torch.Tensor, fifo: FifoMemory, combine: Callable) -> List:
    """combine's result for each row [1, T, ...], in the batch's row order, for rows that are
    consecutive windows of the stream (the caller concatenates them).

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
    out = [None] * vocab_scores.shape[0]
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
        out[row] = combine(slice(row, row + 1), vocab_scores[row:row + 1], row_keys,
                           memory_keys, memory_labels, visibility)
        pushed = scored[row]
        fifo.append(keys[row][pushed], labels[row][pushed], label_offsets[row][pushed], docs[row][pushed])
    return out
