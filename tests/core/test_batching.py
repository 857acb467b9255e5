"""Consecutive-segment batching invariants (paper Fig. 2b)."""

import numpy as np
import pytest

from trime.core.batching import consecutive_groups, shuffled_batches
from trime.core.documents import document_starts, title_lines, token_document_ids

# 4 documents of 7, 3, 1 and 5 segments
DOCS = [0] * 7 + [1] * 3 + [2] * 1 + [3] * 5


def test_groups_are_runs_of_one_document_in_order():
    groups = consecutive_groups(DOCS, m=3)
    full = [g for g in groups if len({DOCS[s] for s in g}) == 1 and len(g) == 3]
    # doc 0 gives 2 full runs, doc 1 one, doc 3 one
    assert full[:4] == [[0, 1, 2], [3, 4, 5], [7, 8, 9], [11, 12, 13]]
    for g in groups:
        assert len(g) <= 3
        for a, b in zip(g, g[1:]):  # within a group, same-document neighbours are consecutive
            if DOCS[a] == DOCS[b]:
                assert b == a + 1


def test_every_segment_once_and_leftovers_kept():
    groups = consecutive_groups(DOCS, m=3)
    used = sorted(s for g in groups for s in g)
    assert used == list(range(len(DOCS)))
    # leftovers 6 (doc 0), 10 (doc 2), 14, 15 (doc 3) packed together, not dropped
    assert groups[4:] == [[6, 10, 14], [15]]


def test_same_order_for_same_seed_and_epoch():
    groups = consecutive_groups(DOCS, m=2)
    a = shuffled_batches(groups, 2, seed=1, epoch=3)
    assert a == shuffled_batches(groups, 2, seed=1, epoch=3)
    assert a != shuffled_batches(groups, 2, seed=1, epoch=4)
    assert a != shuffled_batches(groups, 2, seed=2, epoch=3)
    for batch in a:  # batches are concatenations of whole groups
        chunks = [batch[i:i + 2] for i in range(0, len(batch), 2)]
        assert all(c in groups for c in chunks)
    assert sorted(s for b in a for s in b) == list(range(len(DOCS)))


def test_bad_input():
    with pytest.raises(ValueError, match=">= 1"):
        consecutive_groups(DOCS, m=0)
    with pytest.raises(ValueError, match="contiguous"):
        consecutive_groups([0, 0, 1, 0], m=2)
    with pytest.raises(ValueError, match=">= 1"):
        shuffled_batches([[0]], 0, seed=1, epoch=1)


def test_m_equal_one_is_plain_random_batching():
    groups = consecutive_groups(np.arange(10), m=1)
    assert groups == [[i] for i in range(10)]


def _stream(lines, vocab):
    """Token ids of lines (each + </s> = 2) as fairseq-preprocess lays them out."""
    ids = [[vocab.setdefault(w, len(vocab) + 4) for w in line.split()] + [2] for line in lines]
    return np.array([t for line in ids for t in line]), np.array([len(line) for line in ids])


def _title_lines(text):
    vocab = {"=": 4}
    tokens, sizes = _stream(text, vocab)
    return title_lines(tokens, sizes, vocab["="]).tolist()


def _line_document_ids(text):
    vocab = {"=": 4}
    tokens, sizes = _stream(text, vocab)
    line_starts = np.r_[0, np.cumsum(sizes)[:-1]]
    return token_document_ids(line_starts, document_starts(tokens, sizes, "title", vocab["="])).tolist()


def test_wikitext_documents_start_at_title_lines():
    text = [" = Valkyria = ", "", " = = Gameplay = = ", " The game .", " = Goals ; A = ", " x .", "",
            " = Tower Building = ", "", " Text ."]
    # the title pattern " = X = " (not " = = X = = "), each line alone between empty lines
    alone = [_title_lines(["", line, ""])[1] for line in text]
    assert alone == [True] + [False] * 3 + [True] + [False] * 2 + [True, False, False]
    # a table legend " = Goals ; A = " matches the pattern but is not between empty lines
    assert _title_lines(text) == [True] + [False] * 6 + [True, False, False]
    assert _line_document_ids(text) == [0] * 7 + [1] * 3
    # text before the first title is a document of its own
    assert _line_document_ids(["intro", ""] + text) == [0, 0] + [1] * 7 + [2] * 3


def test_document_starts_match_the_line_rule():
    text = ["intro", "", " = Valkyria = ", "", " = = Gameplay = = ", " The game .", " = = = x = = = ",
            " = Goals ; A = ", "", " = Tower Building = ", "", " Text = .", "", "", " = A = B = "]
    vocab = {}
    tokens, sizes = _stream(text, vocab)
    line_starts = np.r_[0, np.cumsum(sizes)[:-1]]
    titles = title_lines(tokens, sizes, vocab["="])
    expected = [0] + [int(line_starts[i]) for i in np.flatnonzero(titles)]
    assert document_starts(tokens, sizes, "title", vocab["="]).tolist() == expected
    assert len(expected) == 4  # intro, Valkyria, Tower Building, A = B (last line); not Goals ; A
    # "=" absent from the dictionary: one document
    assert document_starts(tokens, sizes, "title", None).tolist() == [0]
    # empty-line: a document starts after each run of empty lines
    assert document_starts(tokens, sizes, "empty-line").tolist() == [
        0] + [int(line_starts[i]) for i in (2, 4, 9, 11, 14)]
    assert document_starts(tokens, sizes, "none").tolist() == [0]
    with pytest.raises(ValueError, match="document boundary"):
        document_starts(tokens, sizes, "chapter")


def test_token_document_ids():
    starts = np.array([0, 5, 9])
    assert token_document_ids(np.arange(11), starts).tolist() == [0] * 5 + [1] * 4 + [2] * 2


def test_consecutive_batches_single_worker():
    from trime.core.batching import consecutive_batches

    batches = consecutive_batches(DOCS, m=2, batch_size=4, seed=5, epoch=1)
    assert batches == shuffled_batches(consecutive_groups(DOCS, 2), 2, seed=5, epoch=1)
    with pytest.raises(ValueError, match=r"3 segments per group must divide the batch size \(4\)"):
        consecutive_batches(DOCS, m=3, batch_size=4, seed=5, epoch=1)


def test_consecutive_batches_grouped_across_workers():
    from trime.core.batching import consecutive_batches

    docs = [0] * 20 + [1] * 9
    W, B, m = 2, 4, 2
    batches = consecutive_batches(docs, m=m, batch_size=B, seed=1, epoch=2, num_shards=W, grouped=True)
    assert len(batches) % W == 0
    assert sorted(s for b in batches for s in b) == list(range(len(docs)))
    steps = [batches[i] + batches[i + 1] for i in range(0, len(batches), W)]
    full = [s for s in steps if len(s) == W * B]
    # a full step = W·B/m consecutive groups = W·B consecutive segments of one document here
    assert [0, 1, 2, 3, 4, 5, 6, 7] in full and all(s == list(range(s[0], s[0] + W * B)) for s in full)
    assert batches == consecutive_batches(docs, m=m, batch_size=B, seed=1, epoch=2, num_shards=W,
                                          grouped=True)


def test_bm25_chain_follows_neighbours():
    from trime.core.batching import bm25_chain

    # a cycle 0 -> 1 -> 2 -> 3 -> 4 -> 0 (each lists itself first, as a BM25 query returns it):
    # whatever the random start, the chain walks the whole cycle without restarting
    cycle = [[i, (i + 1) % 5, (i + 2) % 5] for i in range(5)]
    for seed in range(6):
        order = bm25_chain(cycle, seed)
        assert order == [(order[0] + i) % 5 for i in range(5)]
    # two components {0, 1, 2} and {3, 4}: a restart only when no neighbour is unused
    neighbours = [[1, 2], [2, 0], [0, 1], [4], [3]]
    for seed in range(6):
        order = bm25_chain(neighbours, seed)
        assert sorted(order) == list(range(5))
        for a, b in zip(order, order[1:]):
            unused_before_b = set(range(5)) - set(order[:order.index(b)])
            first_unused = next((n for n in neighbours[a] if n in unused_before_b), None)
            assert b == first_unused or first_unused is None  # followed, or a restart
    assert bm25_chain(neighbours, 3) == bm25_chain(neighbours, 3)


def test_in_batch_target_coverage_matches_word_by_word_count():
    from trime.core.batching import in_batch_target_coverage

    rng = np.random.default_rng(0)
    segments = [rng.integers(0, 30, size=rng.integers(1, 12)) for _ in range(13)]
    batches = [[0, 5, 7], [1], [2, 3, 4, 6], [8, 9, 10, 11, 12]]
    rare = np.zeros(30, dtype=bool)
    rare[20:] = True
    covered, total, covered_rare, total_rare = 0, 0, 0, 0
    for batch in batches:  # naive: for every word, look through the other segments
        for s in batch:
            for token in segments[s].tolist():
                found = any(token in segments[o].tolist() for o in batch if o != s)
                covered += found
                total += 1
                if token >= 20:
                    covered_rare += found
                    total_rare += 1
    coverage = in_batch_target_coverage(segments, batches, rare)
    assert coverage["all"] == pytest.approx(covered / total)
    assert coverage["rare"] == pytest.approx(covered_rare / total_rare)
    assert 0 < coverage["all"] < 1
    # a batch of one segment has no in-batch memory; identical segments cover everything
    assert in_batch_target_coverage(segments, [[1]])["all"] == 0
    assert in_batch_target_coverage([segments[0], segments[0]], [[0, 1]])["all"] == 1


def test_length_buckets_split_by_size_rank_into_equal_counts():
    import numpy as np

    from trime.core.batching import length_buckets, padding_fraction

    sizes = np.array([5, 1, 9, 3, 7, 2, 8, 4, 6])
    buckets = length_buckets(sizes, 3)
    assert [sorted(sizes[b].tolist()) for b in buckets] == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert sorted(i for b in buckets for i in b) == list(range(9))
    assert length_buckets(sizes, 1)[0].tolist() == list(range(9))  # one bucket: the ids as they are
    assert len(length_buckets(sizes, 20)) == 9  # no empty bucket
    with pytest.raises(ValueError, match=">= 1"):
        length_buckets(sizes, 0)
    # padding: positions of the padded batches that hold no token
    assert padding_fraction([[1, 2], [3]], sizes) == pytest.approx(1 - (1 + 9 + 3) / (2 * 9 + 3))
