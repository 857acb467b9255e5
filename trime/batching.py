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
- grouped (``--grouped-shuffling``, W data-parallel workers): one training step's
  W batches hold W·B/m groups that are consecutive in the corpus, so with
  ``--memory-across-workers`` the long memory spans the global batch (what the
  authors did with 4 GPUs); fairseq shuffles whole steps.

- bm25 (Algorithm 1, §4.3): ``bm25_chain`` orders segments by greedily following
  each segment's most similar unused BM25 neighbour; batches are consecutive runs
  of that order. (The BM25 index, the console script and ``--batching bm25`` come
  with issue 4.)

Documents (``--doc-boundary``) are found in the token stream that
``fairseq-preprocess`` wrote (one line = its tokens + </s>):
- ``title``: a document starts at each WikiText article title line `` = Title = ``
  between empty lines (sections `` = = Sub = = `` and table legends do not start
  one); lines before the first title form a document of their own.
- ``empty-line``: an empty line ends a document (one document per paragraph block).
- ``none``: the whole split is one document (the authors' concatenated stream).
"""

from typing import List, Optional, Sequence

import numpy as np


def is_wikitext_title(words: Sequence[str]) -> bool:
    """True for a WikiText article title line `` = Title = `` (not `` = = Section = = ``)."""
    return (len(words) >= 3 and words[0] == "=" and words[-1] == "="
            and words[1] != "=" and words[-2] != "=")


def title_lines(lines: Sequence[Sequence[str]]) -> np.ndarray:
    """Which lines start a WikiText article: a `` = Title = `` line between empty lines.

    The empty neighbours matter: WikiText also has table-legend lines such as
    `` = Goals ; A = `` inside articles (with the rule, WikiText-2 has exactly its
    600 / 60 / 60 articles; without it, 629 / 60 / 62).
    """
    n = len(lines)
    return np.array([is_wikitext_title(words) and (i == 0 or not lines[i - 1])
                     and (i == n - 1 or not lines[i + 1]) for i, words in enumerate(lines)], dtype=bool)


def line_document_ids(lines: Sequence[Sequence[str]]) -> np.ndarray:
    """Document id of each line: a new document starts at each title line (``title_lines``).

    Lines before the first title belong to document 0.
    """
    starts = title_lines(lines)
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


DOC_BOUNDARIES = ("title", "empty-line", "none")


def document_starts(line_tokens: np.ndarray, line_sizes: np.ndarray, boundary: str,
                    equals_id: Optional[int] = None) -> np.ndarray:
    """Stream offsets at which documents start (sorted, always begins with 0).

    Args:
        line_tokens: every line's token ids concatenated, each line ending in </s>.
        line_sizes: tokens per line (</s> included).
        boundary: one of DOC_BOUNDARIES.
        equals_id: dictionary index of ``=`` (needed for ``title``).
    """
    sizes = np.asarray(line_sizes, dtype=np.int64)
    line_starts = np.r_[0, np.cumsum(sizes)[:-1]] if len(sizes) else np.zeros(0, np.int64)
    if boundary == "none" or len(sizes) == 0:
        return np.zeros(1, dtype=np.int64)
    empty = sizes <= 1  # only </s>
    if boundary == "empty-line":
        after_empty = np.r_[False, empty[:-1]] & ~empty
        return np.unique(np.r_[0, line_starts[after_empty]]).astype(np.int64)
    if boundary != "title":
        raise ValueError(f"unknown --doc-boundary {boundary!r}; choose one of {', '.join(DOC_BOUNDARIES)}")
    if equals_id is None:
        return np.zeros(1, dtype=np.int64)
    tokens = np.asarray(line_tokens)
    words = sizes - 1  # without </s>
    title = words >= 3
    idx = np.flatnonzero(title)
    first, last = line_starts[idx], line_starts[idx] + words[idx] - 1
    title[idx] = ((tokens[first] == equals_id) & (tokens[last] == equals_id)
                  & (tokens[first + 1] != equals_id) & (tokens[last - 1] != equals_id))
    title &= np.r_[True, empty[:-1]] & np.r_[empty[1:], True]  # between empty lines (title_lines)
    return np.unique(np.r_[0, line_starts[title]]).astype(np.int64)


def token_document_ids(offsets: np.ndarray, doc_starts: np.ndarray) -> np.ndarray:
    """Document id (index into doc_starts) of tokens at the given stream offsets."""
    return np.searchsorted(doc_starts, offsets, side="right") - 1


def check_consecutive_segments(m: int, batch_size: Optional[int]) -> None:
    """--consecutive-segments must be >= 1 and divide the batch size (when one is given)."""
    if m < 1:
        raise ValueError(f"--consecutive-segments must be >= 1, got {m}")
    if batch_size is not None and (batch_size < 1 or batch_size % m != 0):
        raise ValueError(
            f"--consecutive-segments ({m}) must divide --batch-size ({batch_size}): a batch is "
            "a whole number of groups of m consecutive segments. Pick m among the divisors of the "
            "batch size, or change --batch-size."
        )


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
    Cut the returned order into batches of B consecutive entries. Deterministic in seed.
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
