"""Which training segments share a batch (paper §4, Fig. 2).

Pure functions over segment indices (numpy in, lists out), so the rules are
tested without fairseq.

- consecutive (Fig. 2b, §4.2): a batch of B segments is B/m groups; a group is m
  consecutive segments of one document, in document order, so that the long
  memory rule (``trime.core.visibility.LongMemory``) lets a segment see the earlier ones.
  A document's leftover run of fewer than m segments is not dropped: leftover
  runs of different documents are packed together into groups of m (their
  document ids keep them apart in memory). Groups are shuffled once per epoch
  with a generator seeded by (seed, epoch), so the order is reproducible and a
  resumed run continues it.
- grouped (``--grouped-shuffling``, W data-parallel workers): one training step's
  W batches hold W·B/m groups that are consecutive in the corpus, so with
  ``--memory-across-workers`` the long memory spans the global batch (what the
  authors did with 4 GPUs); fairseq shuffles whole steps.

- bm25 (Algorithm 1, §4.3): ``bm25_chain`` orders segments by greedily following
  each segment's most similar unused BM25 neighbour (``trime.core.bm25``);
  ``chain_batches`` cuts that order into batches.

Documents (which segments belong together) come from ``trime.core.documents``.
"""

from typing import List, Optional, Sequence

import numpy as np


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
        raise ValueError(f"segments per group (m) must be >= 1, got {m}")
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


def worker_slices(step: List[int], batch_size: int, num_shards: int) -> List[List[int]]:
    """One step's segments as ``num_shards`` worker batches of ``batch_size``, in order (worker i
    gets the i-th slice; a short last step leaves the last workers empty batches, which fairseq
    runs as dummy batches)."""
    return [list(step[i * batch_size:(i + 1) * batch_size]) for i in range(num_shards)]


def check_consecutive_segments(m: int, batch_size: Optional[int]) -> None:
    """m must be >= 1 and divide the batch size (when one is given)."""
    if m < 1:
        raise ValueError(f"segments per group (m) must be >= 1, got {m}")
    if batch_size is not None and (batch_size < 1 or batch_size % m != 0):
        raise ValueError(f"{m} segments per group must divide the batch size ({batch_size}): a "
                         "batch is a whole number of groups of m consecutive segments")


def consecutive_batches(segment_docs: Sequence[int], m: int, batch_size: int, seed: int,
                        epoch: int, num_shards: int = 1, grouped: bool = False) -> List[List[int]]:
    """The training batches of one epoch for ``--batching consecutive`` (Fig. 2b).

    Without ``grouped``: groups of m consecutive segments, shuffled by (seed, epoch),
    B/m per batch. With ``grouped``: every run of num_shards batches (one training
    step of num_shards workers) is num_shards·B/m groups consecutive in the corpus;
    the list length is a multiple of num_shards (the last step's segments are split
    evenly), and the order of steps is shuffled by (seed, epoch).
    """
    check_consecutive_segments(m, batch_size)
    groups = consecutive_groups(segment_docs, m)
    per_batch = batch_size // m
    if not grouped or num_shards <= 1:
        return shuffled_batches(groups, per_batch, seed, epoch)
    per_step = per_batch * num_shards
    steps = [[s for g in groups[i:i + per_step] for s in g] for i in range(0, len(groups), per_step)]
    order = np.random.default_rng([seed, epoch]).permutation(len(steps))
    batches = []
    for step in (steps[i] for i in order):
        bounds = np.linspace(0, len(step), num_shards + 1).round().astype(int) \
            if len(step) < batch_size * num_shards else np.arange(0, num_shards + 1) * batch_size
        batches.extend(step[bounds[w]:bounds[w + 1]] for w in range(num_shards))
    return batches


def bm25_chain(neighbours: Sequence[Sequence[int]], seed: int) -> List[int]:
    """Algorithm 1 (Appendix B): order segments by following BM25 neighbours greedily.

    Start from a random unused segment; go to its most similar segment that is still
    unused (``neighbours[c]``: segment ids, most similar first; the segment itself may
    appear and is skipped); when none is left, restart from a random unused segment.
    ``chain_batches`` cuts the returned order into batches. Deterministic in seed.
    (The authors' LM copy compared string and integer ids, so its chain never continued.)
    """
    num = len(neighbours)
    unused = np.ones(num, dtype=bool)
    restarts = np.random.default_rng(seed).permutation(num)  # random_sample(S), in order
    next_restart = 0
    order, current = [], None
    while len(order) < num:
        if current is None:
            while not unused[restarts[next_restart]]:
                next_restart += 1
            current = int(restarts[next_restart])
        order.append(current)
        unused[current] = False
        current = next((int(n) for n in neighbours[current] if unused[n]), None)
    return order


def length_buckets(sizes: np.ndarray, num_buckets: int) -> List[np.ndarray]:
    """The ids of ``sizes`` in ``num_buckets`` buckets of (nearly) equal count, by size rank
    (stable), each in id order (one bucket: all ids, as they are): Algorithm 1 chained inside
    each bucket gives batches of similar-length pairs."""
    if num_buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {num_buckets}")
    return [np.sort(ids) for ids in np.array_split(np.argsort(sizes, kind="mergesort"), num_buckets)
            if len(ids)]


def padding_fraction(batches: Sequence[Sequence[int]], sizes: np.ndarray) -> float:
    """Share of a padded batch's positions that are padding: 1 - Σ sizes / Σ (batch length ×
    its longest size), what fairseq's --max-tokens pays for mixing lengths in a batch."""
    used = sum(int(sizes[list(b)].sum()) for b in batches if len(b))
    padded = sum(len(b) * int(sizes[list(b)].max()) for b in batches if len(b))
    return 1 - used / padded if padded else 0.0


def chain_batches(order: Sequence[int], batch_size: int) -> List[List[int]]:
    """Cut Algorithm 1's order into batches of batch_size consecutive entries (the last
    may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    return [[int(s) for s in order[i:i + batch_size]] for i in range(0, len(order), batch_size)]


def in_batch_target_coverage(segments: Sequence[np.ndarray], batches: Sequence[Sequence[int]],
                             rare: Optional[np.ndarray] = None) -> dict:
    """How often a word's target can be found in the in-batch external memory (§4.3).

    With ``--memory ext`` a segment's memory holds the other segments of its batch, whose
    values are their tokens; a target the model can copy from there is a positive (Eq. 5).
    Returns the fraction of target tokens (every token of every segment) that occur in
    at least one *other* segment of the same batch: ``all``, and ``rare`` over the tokens
    whose id is flagged in the boolean array ``rare`` (when given; nan if none is).
    BM25 batches (Algorithm 1) should score higher than random ones.
    """
    covered = total = covered_rare = total_rare = 0
    for batch in batches:
        distinct = [np.unique(np.asarray(segments[s])) for s in batch]
        ids, segments_with = np.unique(np.concatenate(distinct), return_counts=True)
        for s in batch:
            tokens = np.asarray(segments[s])
            # a segment contains each of its tokens once: found elsewhere iff in >= 2 segments
            elsewhere = segments_with[np.searchsorted(ids, tokens)] >= 2
            covered += int(elsewhere.sum())
            total += len(tokens)
            if rare is not None:
                flagged = rare[tokens]
                covered_rare += int(elsewhere[flagged].sum())
                total_rare += int(flagged.sum())
    result = {"all": covered / total if total else float("nan")}
    if rare is not None:
        result["rare"] = covered_rare / total_rare if total_rare else float("nan")
    return result
