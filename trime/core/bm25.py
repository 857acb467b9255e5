"""Exact BM25 neighbours of training segments (paper §4.3, Appendix B, Algorithm 1).

Every segment is a BM25 query against all the other segments; ``bm25_neighbours``
returns the k most similar other segments of each, which
``trime.core.batching.bm25_chain`` follows to pack similar segments into batches.

BM25 (Robertson–Zaragoza, Lucene's IDF; k1 = 1.5, b = 0.75 by default)::

    score(D, Q) = Σ_{t ∈ set(Q)} IDF(t)·tf(t,D)·(k1+1) / (tf(t,D) + k1·(1 − b + b·|D|/avgdl))
    IDF(t) = ln(1 + (N − df(t) + 0.5) / (df(t) + 0.5))

- the query is a whole segment and each of its distinct terms counts once
  (a repeated word does not make a query "more about" it; the document side
  already weighs repeats through tf);
- the ids given as ``exclude_ids`` (the special symbols <s>, <pad>, </s>, <unk>) are
  not terms: </s> is a line break and <unk> stands for many different rare words, so
  sharing them says nothing about topic. |D| and avgdl count the remaining tokens;
- ties are broken by the lower segment id (identical segments tie exactly); a
  segment is never its own neighbour; one that shares terms with fewer than k
  others is given zero-score segments, lowest ids first, to fill its k;
- scores are float32 sums: near-ties (relative gap ~1e-7) may come out either way.

Two exact backends compute the same scores (``backend``):

- ``matrix`` (default): all N×N scores as Q·Wᵀ, Q the 0/1 query-term matrix and
  W the BM25 weights of each (segment, term). Frequent terms (in ≥ 6% of the
  segments) go through a dense float32 BLAS product — their postings lists are
  nearly N long, which makes sparse methods quadratic in N per term — and the
  others through a scipy sparse product. Time grows as N² in segments
  (``docs/benchmarks.md`` has measurements).
- ``bm25s``: the bm25s library's index and scores, one query at a time (its
  ``get_scores``; the top-k is ours, for deterministic ties). The same
  neighbours up to float32 rounding of near-ties; its cost per query is the
  summed postings length of the query's terms, so it is slower on large data.
"""

import logging
import time
from typing import Dict, Optional, Sequence

import numpy as np

logger = logging.getLogger("trime.bm25")

BACKENDS = ("matrix", "bm25s")
# terms in at least this fraction of the segments go through the dense product: the
# break-even of 2·N² flops of BLAS against df² products of a sparse product on a
# 2-core CPU (speed only: the scores are the same either way)
DENSE_DF_FRACTION = 0.06
SCORE_CHUNK_BYTES = 2 ** 27  # a chunk of query rows × N float32 scores


def _kept_tokens(segments: Sequence[Sequence[int]], exclude_ids: Sequence[int]):
    """(segment id of each kept token, kept token ids), segments in order."""
    lengths = np.fromiter((len(s) for s in segments), dtype=np.int64, count=len(segments))
    tokens = (np.concatenate([np.asarray(s, dtype=np.int32).ravel() for s in segments])
              if len(segments) else np.zeros(0, np.int32))
    rows = np.repeat(np.arange(len(segments), dtype=np.int32), lengths)
    keep = ~np.isin(tokens, np.asarray(list(exclude_ids), dtype=np.int32))
    return rows[keep], tokens[keep]


def bm25_weights(segments: Sequence[Sequence[int]], k1: float = 1.5, b: float = 0.75,
                 exclude_ids: Sequence[int] = ()):
    """W [num_segments, max id + 1] (scipy CSR, float32): the BM25 weight of each term
    in each segment, IDF(t)·tf·(k1+1)/(tf + k1·(1 − b + b·|D|/avgdl)); excluded ids
    are not terms and do not count in |D|. score(D, Q) = Σ_{t ∈ set(Q)} W[D, t]."""
    import scipy.sparse as sp

    num = len(segments)
    rows, tokens = _kept_tokens(segments, exclude_ids)
    num_terms = int(tokens.max()) + 1 if len(tokens) else 1
    term_freq = sp.csr_matrix((np.ones(len(tokens), np.float32), (rows, tokens)),
                              shape=(num, num_terms))  # repeats are summed: tf
    term_freq.sum_duplicates()
    doc_len = np.bincount(rows, minlength=num).astype(np.float64)  # |D|
    avgdl = max(doc_len.mean(), 1e-12) if num else 1.0
    doc_freq = np.bincount(term_freq.indices, minlength=num_terms)
    idf = np.log1p((num - doc_freq + 0.5) / (doc_freq + 0.5))
    length_norm = k1 * (1.0 - b + b * doc_len / avgdl)
    tf = term_freq.data.astype(np.float64)
    entry_doc = np.repeat(np.arange(num), np.diff(term_freq.indptr))
    weights = idf[term_freq.indices] * tf * (k1 + 1.0) / (tf + length_norm[entry_doc])
    return sp.csr_matrix((weights.astype(np.float32), term_freq.indices, term_freq.indptr),
                         shape=term_freq.shape)


def top_k_ids(scores: np.ndarray, k: int) -> np.ndarray:
    """Column ids of the k highest scores of each row, best first, ties to the lower id.

    argpartition finds the k-th highest score v of a row; only rows with more than
    k scores ≥ v (a tie at the boundary) are re-selected exactly, by (-score, id).
    """
    num_cols = scores.shape[1]
    best = np.argpartition(scores, num_cols - k, axis=1)[:, num_cols - k:]
    best_scores = np.take_along_axis(scores, best, axis=1)
    kth = best_scores.min(axis=1)
    for row in np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > k):
        candidates = np.flatnonzero(scores[row] >= kth[row])
        candidates = candidates[np.lexsort((candidates, -scores[row, candidates]))][:k]
        best[row], best_scores[row] = candidates, scores[row, candidates]
    order = np.lexsort((best, -best_scores), axis=-1)
    return np.take_along_axis(best, order, axis=1)


def _first_identical_row(matrix) -> np.ndarray:
    """For each row of a CSR matrix, the first row with the same entries (itself if none)."""
    import hashlib

    first_of, firsts = {}, np.arange(matrix.shape[0])
    for row in range(matrix.shape[0]):
        entries = slice(matrix.indptr[row], matrix.indptr[row + 1])
        key = hashlib.blake2b(matrix.indices[entries].tobytes() + matrix.data[entries].tobytes(),
                              digest_size=16).digest()
        firsts[row] = first_of.setdefault(key, row)
    return firsts


def _matrix_scorer(segments, k1: float, b: float, exclude_ids, dense_df_fraction: float):
    """Index for backend "matrix"; returns score_rows(start, stop) -> float32 [rows, N].

    scores = Q·Wᵀ: a dense BLAS product over the frequent terms + a sparse product
    over the others (exact up to float32 rounding)."""
    weights = bm25_weights(segments, k1, b, exclude_ids)
    num = weights.shape[0]
    query_terms = weights.copy()
    query_terms.data[:] = 1.0  # set(Q): each distinct term once
    doc_freq = np.bincount(weights.indices, minlength=weights.shape[1])
    dense_min_df = max(1.0, dense_df_fraction * num)
    dense_terms = np.flatnonzero(doc_freq >= dense_min_df)
    sparse_terms = np.flatnonzero((doc_freq > 0) & (doc_freq < dense_min_df))
    logger.info(f"BM25 index: {num:,} segments; {len(dense_terms):,} terms in >= "
                f"{dense_min_df:,.0f} segments scored by a dense product, "
                f"{len(sparse_terms):,} by a sparse product")
    dense_doc_weights = np.ascontiguousarray(weights[:, dense_terms].T.toarray())  # [H, N]
    dense_queries = query_terms[:, dense_terms].tocsr()
    sparse_doc_weights = weights[:, sparse_terms].T.tocsr()  # [V_s, N]
    sparse_queries = query_terms[:, sparse_terms].tocsr()
    # BLAS may sum the columns of identical segments in different orders: give each
    # copy the score of its first occurrence, so that their tie is exact (lower id first)
    first_copy = _first_identical_row(weights)
    copies = np.flatnonzero(first_copy != np.arange(num))
    originals = first_copy[copies]

    def score_rows(start, stop):
        if len(dense_terms):
            scores = dense_queries[start:stop].toarray() @ dense_doc_weights
        else:
            scores = np.zeros((stop - start, num), np.float32)
        if len(sparse_terms):
            scores += (sparse_queries[start:stop] @ sparse_doc_weights).toarray()
        scores[:, copies] = scores[:, originals]
        return scores

    return score_rows


def _bm25s_scorer(segments, k1: float, b: float, exclude_ids):
    """Index for backend "bm25s" (the bm25s library, method "lucene"); returns
    score_rows(start, stop), one bm25s query per row."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    rows, tokens = _kept_tokens(segments, exclude_ids)
    num = len(segments)
    terms, columns = np.unique(tokens, return_inverse=True)  # bm25s wants ids 0..V-1
    bounds = np.searchsorted(rows, np.arange(num + 1))
    docs = [columns[bounds[i]:bounds[i + 1]] for i in range(num)]
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    retriever.index(bm25s.tokenization.Tokenized(ids=[d.tolist() for d in docs],
                                                 vocab={int(t): i for i, t in enumerate(terms)}),
                    create_empty_token=False, show_progress=False)
    query_terms = [np.unique(d).tolist() for d in docs]  # bm25s would count a repeat again

    def score_rows(start, stop):
        scores = np.zeros((stop - start, num), np.float32)
        for row, query in enumerate(query_terms[start:stop]):
            if query:
                scores[row] = retriever.get_scores(query)
        # bm25s's "lucene" drops the constant factor (k1 + 1): same ranking; put it back
        return scores * np.float32(k1 + 1.0)

    return score_rows


def bm25_neighbours(segments: Sequence[Sequence[int]], k: int, k1: float = 1.5, b: float = 0.75,
                    exclude_ids: Sequence[int] = (), backend: str = "matrix",
                    dense_df_fraction: float = DENSE_DF_FRACTION, chunk_size: Optional[int] = None,
                    progress: bool = False,
                    timings: Optional[Dict[str, float]] = None) -> np.ndarray:
    """For each segment, the ids of its k most BM25-similar other segments, best first.

    Args:
        segments: token ids of each segment (the query is the whole segment).
        k: neighbours per segment (Algorithm 1's top-k; 1 <= k < len(segments)).
        k1, b: BM25 parameters of the formula in the module docstring.
        exclude_ids: token ids that are not terms (the special symbols).
        backend: "matrix" (dense + sparse products) or "bm25s"; same scores.
        dense_df_fraction: "matrix" only: terms in at least this fraction of the
            segments use the dense product (speed only, the scores are the same).
        chunk_size: query rows scored at once (memory: chunk_size × N float32).
        progress: show a tqdm progress bar.
        timings: if given, receives the seconds of "index" and "retrieval".
    Returns:
        int64 [num_segments, k]; ties broken by the lower segment id.
    """
    num = len(segments)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k >= num:
        raise ValueError(f"k = {k} neighbours need at least {k + 1} segments, there are {num}: "
                         f"use k <= {num - 1}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown BM25 backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    chunk_size = chunk_size or int(np.clip(SCORE_CHUNK_BYTES // (4 * num), 1, 1024))

    from tqdm import tqdm

    started = time.perf_counter()
    if backend == "matrix":
        score_rows = _matrix_scorer(segments, k1, b, exclude_ids, dense_df_fraction)
    else:
        score_rows = _bm25s_scorer(segments, k1, b, exclude_ids)
    indexed = time.perf_counter()
    neighbours = np.empty((num, k), dtype=np.int64)
    with tqdm(total=num, desc="BM25 neighbours", unit="segment", disable=not progress) as bar:
        for start in range(0, num, chunk_size):
            stop = min(num, start + chunk_size)
            scores = score_rows(start, stop)
            rows = np.arange(stop - start)
            scores[rows, start + rows] = -np.inf  # a segment is not its own neighbour
            neighbours[start:stop] = top_k_ids(scores, k)
            bar.update(stop - start)
    if timings is not None:
        timings["index"] = indexed - started
        timings["retrieval"] = time.perf_counter() - indexed
    return neighbours
