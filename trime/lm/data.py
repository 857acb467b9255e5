"""Where each training segment sits in the corpus, for the long memory rule.

``SegmentPositionsDataset`` wraps the task's ``MonolingualDataset`` and adds to
every batch:

- ``trime_segment_start`` [B]: stream offset of each segment's first target token;
- ``trime_doc`` [B, T]: document id of every target position (``trime.core.documents``
  says how documents are delimited).

The criterion sorts a batch's segments by offset and lets a position see the
earlier positions of its document (``trime.core.visibility.LongMemory``).
"""

import numpy as np
import torch
from fairseq.data import BaseWrapperDataset

from trime.core.documents import document_starts, token_document_ids
from trime.glue.scorer import TARGETS_ONLY


def line_stream(indexed_dataset):
    """(all tokens of the split concatenated, tokens per line) of a fairseq indexed dataset."""
    sizes = np.asarray(indexed_dataset.sizes, dtype=np.int64)
    index = getattr(indexed_dataset, "_index", None)
    buffer = getattr(indexed_dataset, "_bin_buffer", None)
    if index is not None and buffer is not None:  # mmap dataset: read the tokens in one go
        tokens = np.frombuffer(buffer, dtype=index.dtype, count=int(sizes.sum()))
    else:
        tokens = np.concatenate([indexed_dataset[i].numpy() for i in range(len(sizes))]) \
            if len(sizes) else np.zeros(0, np.int64)
    return tokens, sizes


class SegmentPositionsDataset(BaseWrapperDataset):
    """Adds each segment's corpus offset and per-token document ids to its batches."""

    def __init__(self, dataset, segment_starts: np.ndarray, doc_starts: np.ndarray,
                 target_shift: int = 0):
        super().__init__(dataset)
        self.target_shift = target_shift  # -1 when --add-bos-token prepends a position
        self.segment_starts = np.asarray(segment_starts, dtype=np.int64)
        self.doc_starts = np.asarray(doc_starts, dtype=np.int64)
        self.stream_tokens = None
        if len(self.segment_starts) != len(dataset):
            raise ValueError(f"{len(self.segment_starts)} segment offsets for {len(dataset)} segments")

    @classmethod
    def from_token_blocks(cls, dataset, token_blocks, indexed_dataset, dictionary, boundary,
                          add_bos_token=False):
        """Offsets from a ``TokenBlockDataset`` over ``indexed_dataset`` (same stream)."""
        tokens, sizes = line_stream(indexed_dataset)
        equals = dictionary.index("=")
        equals_id = equals if equals != dictionary.unk() else None
        doc_starts = document_starts(tokens, sizes, boundary, equals_id)
        segment_starts = np.asarray(token_blocks.slice_indices)[:, 0]
        positions = cls(dataset, segment_starts, doc_starts, target_shift=-1 if add_bos_token else 0)
        positions.stream_tokens = tokens  # the split as one stream (row i of a datastore = token i)
        return positions

    @property
    def num_documents(self) -> int:
        return len(self.doc_starts)

    def segment_documents(self) -> np.ndarray:
        """Document of each segment's first target token (for grouping segments)."""
        return token_document_ids(self.segment_starts, self.doc_starts)

    def label_positions(self, starts: np.ndarray, width: int, context=0):
        """(stream offsets [B, width] of each position's label, their document ids).

        Position j of a row whose segment starts at s, after c context positions,
        predicts the token at offset s - c + j.
        """
        offsets = (starts - context)[:, None] + np.arange(width)[None, :] + self.target_shift
        return offsets, token_document_ids(offsets, self.doc_starts)

    def collater(self, samples):
        sample = self.dataset.collater(samples)
        if len(sample) == 0:
            return sample
        starts = self.segment_starts[sample["id"].numpy()]
        _, docs = self.label_positions(starts, sample["target"].shape[1])
        sample["trime_segment_start"] = torch.from_numpy(starts)
        sample["trime_doc"] = torch.from_numpy(docs)
        return sample


class EvalStreamDataset(BaseWrapperDataset):
    """Evaluation batches in stream order, with the offset and document of every label.

    Wraps the evaluation dataset (after fairseq's ``LMContextWindowDataset``, if
    any) and adds ``trime_label_offset`` / ``trime_doc`` [B, T'] for every input
    position, context positions included (``SegmentPositionsDataset.label_positions``).
    Long memory at evaluation (``trime.core.fifo``) needs this order and these offsets.
    Its batches are for ``fairseq-eval-lm``, which reads only the targets' log-probabilities:
    they carry ``TARGETS_ONLY`` (``trime.glue.scorer``).
    """

    def __init__(self, dataset, positions: SegmentPositionsDataset):
        super().__init__(dataset)
        self.positions = positions

    def ordered_indices(self):
        return np.arange(len(self.dataset))

    def collater(self, samples):
        sample = self.dataset.collater(samples)
        if len(sample) == 0:
            return sample
        starts = sample["trime_segment_start"].numpy()
        context = np.asarray(sample.get("start_indices", np.zeros(len(starts))), dtype=np.int64)
        offsets, docs = self.positions.label_positions(starts, sample["target"].shape[1], context)
        sample["trime_label_offset"] = torch.from_numpy(offsets)
        sample["trime_doc"] = torch.from_numpy(docs)  # over the window, context included
        sample[TARGETS_ONLY] = True
        return sample


class StreamShard(BaseWrapperDataset):
    """Segments ``start`` .. ``stop - 1`` of an evaluation stream (``EvalStreamDataset``): one of
    ``--num-shards`` contiguous parts of a split, so that a shard's datastore rows are one run of
    stream offsets. Items keep their ids in the whole split."""

    def __init__(self, dataset, start: int, stop: int):
        super().__init__(dataset)
        self.start, self.stop = int(start), int(stop)

    def __getitem__(self, index):
        return self.dataset[self.start + index]

    def __len__(self):
        return self.stop - self.start

    @property
    def sizes(self):
        return self.dataset.sizes[self.start:self.stop]

    def num_tokens(self, index):
        return self.dataset.num_tokens(self.start + index)

    def num_tokens_vec(self, indices):
        return self.dataset.num_tokens_vec(np.asarray(indices) + self.start)

    def size(self, index):
        return self.dataset.size(self.start + index)

    def ordered_indices(self):
        return np.arange(len(self))
