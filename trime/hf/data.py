"""Training batches for ``trime.hf``: a tokenised corpus as segments, and the batchings of paper §4
(Fig. 2) on the rules of ``trime.core.batching``.

- ``read_segments``: a text file's documents (``text_documents``), tokenised, as ``Segments``.
- ``Segments``: the documents (lists of token ids) concatenated into one stream and cut into
  segments of L scored tokens; segment i holds stream tokens [iL, iL + L], so each token is a
  target once (position t predicts t + 1, as ``transformers`` does), with each position's
  document id and the segment's corpus offset (what long memory needs).
- ``collate_segments``: a batch as ``TrimeLoss`` takes it (input_ids, attention_mask, labels,
  doc_ids, segment_starts).
- ``ConsecutiveBatches`` (Fig. 2b, §4.2, for memory="long"): groups of m consecutive segments
  of one document, shuffled per epoch.
- ``BM25Batches`` (Fig. 2c, §4.3, Algorithm 1, for memory="ext"): similar segments together
  (``trime.core.bm25``), the batches shuffled per epoch.
Random batches (Fig. 2a) are any sampler's.
"""

import math
from typing import Iterable, List, Sequence

import numpy as np
import torch

from trime.core.batching import (bm25_chain, chain_batches, check_consecutive_segments,
                                 consecutive_batches, shuffled_batches)

IGNORE = -100


def text_documents(lines: Sequence[str], boundary: str = "title") -> List[str]:
    """The documents of a text file's ``lines`` under ``--doc-boundary`` (``trime.core.documents``'
    rules, on whitespace-separated words: a WikiText `` = Title = `` line between empty lines
    starts one; an empty line ends one; none = one document), each as one string whose every
    line, the last included, ends in a line end (a token for tokenizers that keep one)."""
    from trime.core.documents import document_starts

    words = [line.split() for line in lines]
    sizes = np.array([len(w) + 1 for w in words], dtype=np.int64)  # + a line end
    tokens = np.array([1 if word == "=" else 2 for w in words for word in (*w, None)], dtype=np.int64)
    line_starts = np.r_[0, np.cumsum(sizes)[:-1]]
    starts = np.searchsorted(line_starts, document_starts(tokens, sizes, boundary, equals_id=1))
    bounds = [*starts.tolist(), len(lines)]
    documents = ["".join(line.rstrip("\n") + "\n" for line in lines[a:b]) for a, b in zip(bounds, bounds[1:])]
    return [d for d in documents if d.strip()]


class Segments(torch.utils.data.Dataset):
    """Segments of ``length`` targets over the concatenated ``documents`` (see the module)."""

    def __init__(self, documents: Iterable[Sequence[int]], length: int):
        if length < 1:
            raise ValueError(f"segment length must be >= 1, got {length}")
        documents = [np.asarray(d, dtype=np.int64) for d in documents if len(d)]
        if not documents or sum(map(len, documents)) < 2:
            raise ValueError("Segments needs at least two tokens of text")
        self.stream = np.concatenate(documents)
        self.doc_ids = np.repeat(np.arange(len(documents)), [len(d) for d in documents])
        self.length = length

    def __len__(self) -> int:
        return math.ceil((len(self.stream) - 1) / self.length)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        start = i * self.length
        return {"input_ids": torch.from_numpy(self.stream[start:start + self.length + 1]),
                "doc_ids": torch.from_numpy(self.doc_ids[start:start + self.length + 1]),
                "segment_start": start}

    def segment_documents(self) -> np.ndarray:
        """The document of each segment (its first token's): what consecutive batching groups by."""
        return self.doc_ids[::self.length][:len(self)]

    def targets(self, i: int) -> np.ndarray:
        """The tokens segment i predicts (what BM25 compares, as the fairseq side's segments)."""
        start = i * self.length
        return self.stream[start + 1:start + self.length + 1]


def read_segments(path: str, tokenizer, boundary: str, length: int) -> Segments:
    """The ``Segments`` of L = ``length`` targets of a text file: its documents under
    ``--doc-boundary`` ``boundary``, each tokenised by ``tokenizer`` without special tokens."""
    with open(path, encoding="utf-8") as f:
        documents = text_documents(f.readlines(), boundary)
    return Segments([tokenizer(text, add_special_tokens=False)["input_ids"] for text in documents], length)


def collate_segments(items: List[dict], pad_id: int = 0) -> dict:
    """Pad a list of ``Segments`` items into one batch: padding has attention_mask 0, label -100
    and document -1."""
    width = max(len(item["input_ids"]) for item in items)
    batch = {"input_ids": torch.full((len(items), width), pad_id, dtype=torch.long),
             "attention_mask": torch.zeros((len(items), width), dtype=torch.long),
             "labels": torch.full((len(items), width), IGNORE, dtype=torch.long),
             "doc_ids": torch.full((len(items), width), -1, dtype=torch.long),
             "segment_starts": torch.tensor([item["segment_start"] for item in items])}
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        batch["input_ids"][row, :n] = item["input_ids"]
        batch["attention_mask"][row, :n] = 1
        batch["labels"][row, :n] = item["input_ids"]
        batch["doc_ids"][row, :n] = item["doc_ids"]
    return batch


class _EpochBatches(torch.utils.data.Sampler):
    """A batch sampler whose batches are planned per epoch (deterministic in seed and epoch);
    ``set_epoch`` as torch's DistributedSampler, else each pass is the next epoch."""

    def __init__(self, seed: int = 1):
        self.seed, self.epoch, self._explicit = seed, 1, False

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._explicit = epoch, True

    def batches(self, epoch: int) -> List[List[int]]:
        raise NotImplementedError

    def __iter__(self):
        batches = self.batches(self.epoch)
        if not self._explicit:
            self.epoch += 1
        return iter(batches)

    def __len__(self) -> int:
        return len(self.batches(self.epoch))


class ConsecutiveBatches(_EpochBatches):
    """Batches of ``batch_size`` segments made of groups of ``m`` consecutive segments of one
    document (paper Fig. 2b; ``trime.core.batching.consecutive_batches``)."""

    def __init__(self, segments: Segments, m: int, batch_size: int, seed: int = 1):
        super().__init__(seed)
        check_consecutive_segments(m, batch_size)
        self.documents, self.m, self.batch_size = segments.segment_documents(), m, batch_size

    def batches(self, epoch):
        return consecutive_batches(self.documents, self.m, self.batch_size, self.seed, epoch)

    def __len__(self):
        return len(self.batches(1))


class BM25Batches(_EpochBatches):
    """Algorithm 1's batches: each segment followed by its most BM25-similar unused neighbour
    among its ``k`` nearest (targets as terms, ``exclude_ids`` left out), the chain cut into
    batches of ``batch_size``; the batches' order is shuffled per epoch."""

    def __init__(self, segments: Segments, batch_size: int, k: int = 20, exclude_ids=(),
                 seed: int = 1, progress: bool = False):
        from trime.core.bm25 import bm25_neighbours

        super().__init__(seed)
        targets = [segments.targets(i) for i in range(len(segments))]
        k = min(k, len(targets) - 1)
        if k < 1:
            raise ValueError("BM25 batches need at least two segments")
        neighbours = bm25_neighbours(targets, k, exclude_ids=exclude_ids, progress=progress)
        self.chain = chain_batches(bm25_chain(neighbours, seed), batch_size)

    def batches(self, epoch):
        return shuffled_batches(self.chain, 1, self.seed, epoch)

    def __len__(self):
        return len(self.chain)
