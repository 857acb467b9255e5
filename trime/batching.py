"""Which training segments share a batch (paper §4, Fig. 2).

Pure functions over segment indices (numpy in, lists out), so the rules are
tested without fairseq.

- consecutive (Fig. 2b, §4.2): a batch of B segments is B/m groups; a group is m
  consecutive segments of one document, in document order, so that the long
  memory rule (``trime.memory.LongMemory``) lets a segment see the earlier ones.
  A document's leftover run of fewer than m segments is not dropped: leftover
  runs of different documents are packed together into groups of m (their
  document ids keep them apart in memory). Groups are shuffled once per epoch
  with a generator seeded by (seed, epoch), so the order is reproducible and a
  resumed run continues it.
"""

from typing import List, Sequence

import numpy as np


def is_wikitext_title(words: Sequence[str]) -> bool:
    """True for a WikiText article title line `` = Title = `` (not `` = = Section = = ``)."""
    return (len(words) >= 3 and words[0] == "=" and words[-1] == "="
            and words[1] != "=" and words[-2] != "=")


def line_document_ids(lines: Sequence[Sequence[str]]) -> np.ndarray:
    """Document id of each line: a new document starts at each WikiText title line.

    Lines before the first title belong to document 0.
    """
    starts = np.fromiter((is_wikitext_title(words) for words in lines), dtype=bool, count=len(lines))
    ids = np.cumsum(starts)
    # cumsum counts the title lines so far: shift by one when line 0 is itself a title
    return ids - 1 if len(ids) and starts[0] else ids


def consecutive_groups(segment_docs: Sequence[int], m: int) -> List[List[int]]:
    """Groups of m segment indices: runs of consecutive segments of one document.

    Args:
        segment_docs: document id of each segment, segments in corpus order (a
            document's segments are contiguous and in order).
        m: segments per group (--consecutive-segments).
    Returns:
        every segment exactly once; all groups have m segments except possibly the
        last leftover group.
    """
    if m < 1:
        raise ValueError(f"--consecutive-segments must be >= 1, got {m}")
    docs = np.asarray(segment_docs)
    if docs.ndim != 1:
        raise ValueError("segment_docs must be a 1-D sequence of document ids")
    # start of each document's run of segments
    starts = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]]) if len(docs) else np.array([], int)
    ends = np.r_[starts[1:], len(docs)].astype(int)
    if len(set(docs[starts].tolist())) != len(starts):
        raise ValueError("a document's segments must be contiguous in segment_docs")
    groups, leftover = [], []
    for start, end in zip(starts.tolist(), ends.tolist()):
        full_end = start + (end - start) // m * m
        groups.extend(list(range(i, i + m)) for i in range(start, full_end, m))
        leftover.extend(range(full_end, end))
    # leftover runs, each still in document order, packed m at a time
    groups.extend(leftover[i:i + m] for i in range(0, len(leftover), m))
    return groups


def shuffled_batches(groups: List[List[int]], groups_per_batch: int, seed: int,
                     epoch: int) -> List[List[int]]:
    """Shuffle whole groups (deterministic in seed and epoch) and concatenate them into batches."""
    if groups_per_batch < 1:
        raise ValueError(f"groups_per_batch must be >= 1, got {groups_per_batch}")
    order = np.random.default_rng([seed, epoch]).permutation(len(groups))
    batches = []
    for i in range(0, len(order), groups_per_batch):
        batches.append([s for g in order[i:i + groups_per_batch] for s in groups[g]])
    return batches
