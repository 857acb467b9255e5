"""CachedSearch answers as the index itself: the first n of a search at depth equal a search at n
(flat and IVF at a fixed nprobe); repeated queries are served from memory."""

import faiss
import numpy as np
import pytest

from trime.extmem.search_cache import CachedSearch


def _data(seed=0, n=600, d=8):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.standard_normal((40, d)).astype(np.float32)


def _ivf(keys, metric):
    quantizer = faiss.IndexFlatIP(keys.shape[1]) if metric == "ip" else faiss.IndexFlatL2(keys.shape[1])
    index = faiss.IndexIVFFlat(quantizer, keys.shape[1], 16,
                               faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2)
    index.train(keys)
    index.add(keys)
    index.nprobe = 3
    return index


@pytest.mark.parametrize("kind", ["flat-l2", "flat-ip", "ivf-l2", "ivf-ip"])
def test_cached_answers_equal_direct_searches_at_every_n(kind):
    keys, queries = _data()
    metric = kind.split("-")[1]
    if kind.startswith("flat"):
        index = faiss.IndexFlatIP(keys.shape[1]) if metric == "ip" else faiss.IndexFlatL2(keys.shape[1])
        index.add(keys)
    else:
        index = _ivf(keys, metric)
    cached = CachedSearch(index, depth=32)
    for n in (32, 1, 5, 17):
        distances, rows = cached.search(queries, n)
        expected_distances, expected_rows = index.search(queries, n)
        assert np.array_equal(rows, expected_rows), (kind, n)
        assert np.allclose(distances, expected_distances, rtol=1e-5, atol=1e-5)
    assert cached.misses == len(queries) and cached.hits == 3 * len(queries)


def test_repeats_in_a_batch_are_searched_once_and_deeper_asks_go_to_the_index():
    keys, queries = _data(1)
    index = faiss.IndexFlatL2(keys.shape[1])
    index.add(keys)
    cached = CachedSearch(index, depth=4)
    batch = np.concatenate([queries[:3], queries[:3], queries[3:5]])
    distances, rows = cached.search(batch, 4)
    assert cached.misses == 5 and cached.hits == 3
    assert np.array_equal(rows[:3], rows[3:6])
    assert np.array_equal(rows, index.search(batch, 4)[1])
    deeper = cached.search(queries[:2], 9)[1]  # beyond depth: the index itself, not remembered
    assert deeper.shape == (2, 9) and np.array_equal(deeper, index.search(queries[:2], 9)[1])
    assert (cached.hits, cached.misses) == (3, 5)


def test_a_graph_index_is_refused():
    with pytest.raises(ValueError, match="flat or IVF"):
        CachedSearch(faiss.IndexHNSWFlat(8, 4), depth=8)
