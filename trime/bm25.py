"""`trime-bm25-batches`: training batches of BM25-similar segments (paper §4.3, Appendix B).

Algorithm 1 packs training segments that share rare words into the same batch,
so that the in-batch memory (--memory ext) holds useful neighbours: every
segment is a BM25 query against all the other segments, and a greedy chain
(``trime.batching.bm25_chain``) goes from each segment to its most similar
unused neighbour; batches are runs of B consecutive entries of that chain.

Pipeline (each step a small function of this module):

1. ``segment_token_ids``: the training segments, exactly the blocks that
   fairseq's language_modeling task makes with ``--sample-break-mode none
   --tokens-per-sample L`` (segment i = training example id i);
2. ``bm25_weights`` / ``bm25_neighbours``: the k most similar other segments of
   every segment (exact BM25, see below);
3. ``trime.batching.bm25_chain`` and ``chain_batches``: the order and the batches;
4. ``save_bm25_batches`` / ``load_bm25_batches``: the JSON file that
   ``fairseq-train ... --task trime_lm --batching bm25 --bm25-batches FILE`` reads.

BM25 (Robertson–Zaragoza, Lucene's IDF; k1 = 1.5, b = 0.75 by default)::

    score(D, Q) = Σ_{t ∈ set(Q)} IDF(t)·tf(t,D)·(k1+1) / (tf(t,D) + k1·(1 − b + b·|D|/avgdl))
    IDF(t) = ln(1 + (N − df(t) + 0.5) / (df(t) + 0.5))

- the query is a whole segment and each of its distinct terms counts once
  (a repeated word does not make a query "more about" it; the document side
  already weighs repeats through tf);
- the special symbols <s>, <pad>, </s>, <unk> are not terms: </s> is a line
  break and <unk> stands for many different rare words, so sharing them says
  nothing about topic. |D| and avgdl count the remaining tokens;
- ties are broken by the lower segment id (identical segments tie exactly); a
  segment is never its own neighbour; one that shares terms with fewer than k
  others is given zero-score segments, lowest ids first, to fill its k;
- scores are float32 sums: near-ties (relative gap ~1e-7) may come out either way.

Two exact backends compute the same scores (``--backend``):

- ``matrix`` (default): all N×N scores as Q·Wᵀ, Q the 0/1 query-term matrix and
  W the BM25 weights of each (segment, term). Frequent terms (in ≥ 6% of the
  segments) go through a dense float32 BLAS product — their postings lists are
  nearly N long, which makes sparse methods quadratic in N per term — and the
  others through a scipy sparse product. 100M tokens at L = 3,072 (32,553
  segments): 4 minutes and 4 GB on 2 cores (scripts/bench/bm25_speed.py).
- ``bm25s``: the bm25s library's index and scores, one query at a time (its
  ``get_scores``; the top-k is ours, for deterministic ties). The same
  neighbours up to float32 rounding of near-ties, but its cost per query is the
  summed postings length of the query's terms: 7.5 s on WikiText-2 (matrix: 1.9 s),
  175 s at 30M tokens (matrix: 25 s), an estimated 15-30 min at 100M.
"""

import argparse
import json
import logging
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from trime.batching import bm25_chain

logger = logging.getLogger("trime.bm25")

FORMAT = "trime-bm25-batches/1"
BACKENDS = ("matrix", "bm25s")
# terms in at least this fraction of the segments go through the dense product: the
# break-even of the measured costs on 2 cores, 2·N² flops of BLAS (~80 GFLOP/s) against
# df² products of scipy's sparse product (~6 ns each): df/N = sqrt(2/80e9 / 6e-9) ≈ 0.06
DENSE_DF_FRACTION = 0.06
SCORE_CHUNK_BYTES = 2 ** 27  # a chunk of query rows × N float32 scores


# -- 1. the training segments -------------------------------------------------------

def segment_token_ids(data_dir: str, split: str, tokens_per_sample: int, dictionary,
                      combine: bool = True) -> List[np.ndarray]:
    """Token ids of each training segment (segment i = block i of fairseq's dataset).

    Built as fairseq's language_modeling task builds ``--sample-break-mode none``
    blocks: ``data_utils.load_indexed_dataset`` (``combine``: also train1, train2, …
    as fairseq-train does for its training split) and a ``TokenBlockDataset`` over
    the concatenated lines, blocks of ``tokens_per_sample`` tokens, the last one
    shorter. (``--shorten-data-split-list`` is not supported.)
    """
    from fairseq.data import TokenBlockDataset, data_utils

    split_path = os.path.join(data_dir, split)
    dataset = data_utils.load_indexed_dataset(split_path, dictionary, combine=combine)
    if dataset is None:
        raise FileNotFoundError(
            f"no binarised split {split!r} in {data_dir!r} (expected {split}.bin/.idx): run "
            f"`fairseq-preprocess --only-source --trainpref TEXT --destdir {data_dir}` first.")
    blocks = TokenBlockDataset(dataset, dataset.sizes, tokens_per_sample, pad=dictionary.pad(),
                               eos=dictionary.eos(), break_mode="none", include_targets=False)
    return [blocks[i].numpy() for i in range(len(blocks))]


def special_token_ids(dictionary) -> List[int]:
    """<s>, <pad>, </s>, <unk>: not BM25 terms (see the module docstring)."""
    return sorted({dictionary.bos(), dictionary.pad(), dictionary.eos(), dictionary.unk()})


# -- 2. BM25 neighbours -------------------------------------------------------------

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
        exclude_ids: token ids that are not terms (``special_token_ids``).
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


# -- 3. batches and the file --------------------------------------------------------

def chain_batches(order: Sequence[int], batch_size: int) -> List[List[int]]:
    """Cut Algorithm 1's order into batches of batch_size consecutive entries (the last
    may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    return [[int(s) for s in order[i:i + batch_size]] for i in range(0, len(order), batch_size)]


def save_bm25_batches(path: str, batches: List[List[int]], **fields) -> None:
    """Write {"format": FORMAT, **fields, "batches": batches} as JSON, one batch a line.

    Atomic: written to path + ".tmp", then renamed over path."""
    header = json.dumps({"format": FORMAT, **fields}, indent=1)
    assert header.endswith("\n}")
    lines = ",\n".join("  " + json.dumps(batch, separators=(",", ":")) for batch in batches)
    text = header[:-2] + ',\n "batches": [\n' + lines + "\n ]\n}\n"
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_bm25_batches(path: str, num_segments: int, tokens_per_sample: int,
                      dictionary) -> List[List[int]]:
    """The batches of a ``trime-bm25-batches`` file, checked against the training data.

    Args:
        path: the file (``--bm25-batches``).
        num_segments: training segments of the task (len of its train dataset).
        tokens_per_sample: the training --tokens-per-sample.
        dictionary: the task's fairseq Dictionary (compared by ``dictionary_checksum``).
    Returns:
        the batches, lists of segment ids; together every segment id exactly once.
    Raises:
        ValueError naming the mismatch and the fix: file missing, unreadable or not
        this format; made for another L, segment count or dictionary; batches not a
        permutation of range(num_segments).
    """
    from trime.vocab import dictionary_checksum

    rerun = (f"rerun `trime-bm25-batches DATA --split train --tokens-per-sample "
             f"{tokens_per_sample} --batch-size B -o {path}` on this training data")
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"BM25 batch file {path!r} does not exist: {rerun}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read BM25 batch file {path!r} ({e}): {rerun}") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        found = content.get("format") if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"{path!r} is not a trime-bm25-batches file (format {found!r}, expected "
                         f"{FORMAT!r}): {rerun}")
    missing = [key for key in ("num_segments", "tokens_per_sample", "dictionary_checksum",
                               "batches") if key not in content]
    if missing:
        raise ValueError(f"{path!r} lacks {', '.join(missing)}: {rerun}")
    file_segments, file_tokens = content["num_segments"], content["tokens_per_sample"]
    if file_tokens != tokens_per_sample or file_segments != num_segments:
        raise ValueError(
            f"{path!r} was made for {file_segments:,} segments of {file_tokens} tokens, this "
            f"training set has {num_segments:,} segments of {tokens_per_sample} tokens: "
            f"{rerun} (--tokens-per-sample must equal the training one)")
    checksum = dictionary_checksum(dictionary)
    if content["dictionary_checksum"] != checksum:
        raise ValueError(
            f"{path!r} was made with another dictionary (checksum "
            f"{content['dictionary_checksum']}, this data's dict.txt: {checksum}): {rerun}")
    batches = content["batches"]
    if not isinstance(batches, list) or not all(
            isinstance(batch, list) and batch and all(type(s) is int for s in batch)
            for batch in batches):
        raise ValueError(f"the batches of {path!r} are not non-empty lists of segment ids: {rerun}")
    ids = np.array([s for batch in batches for s in batch], dtype=np.int64)
    inside = ids[(ids >= 0) & (ids < num_segments)]
    counts = np.bincount(inside, minlength=num_segments)
    if len(ids) != num_segments or len(inside) != len(ids) or (counts != 1).any():
        raise ValueError(
            f"the batches of {path!r} are not a permutation of the {num_segments:,} segment ids "
            f"({len(ids):,} entries, {int((counts == 0).sum()):,} ids missing, "
            f"{int((counts > 1).sum()):,} repeated, {len(ids) - len(inside):,} out of range): "
            f"{rerun}")
    return batches


# -- the console script -------------------------------------------------------------

EPILOG = """\
The file is for training with Algorithm 1's batches (paper Appendix B):

    fairseq-train DATA --user-dir $(trime-user-dir) --task trime_lm \\
        --tokens-per-sample L --batch-size B --batching bm25 --bm25-batches FILE ...

--tokens-per-sample must equal the training one (segment i of this file is training
example i); --batch-size is the number of segments per batch (the training
--batch-size). The file records L, the segment count and a checksum of dict.txt, and
training refuses a file made for other data.

BM25: each segment is a query (its distinct terms, each once) against all the
others; k1, b as given, Lucene's IDF; <s>, <pad>, </s>, <unk> are not terms. The
chain starts at a random segment (--seed) and goes to the most similar unused one
of its k neighbours, restarting at a random unused segment when none is left.
"""


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="trime-bm25-batches", epilog=EPILOG,
        description="Pack training segments into batches of BM25-similar segments "
                    "(TRIME, Appendix B, Algorithm 1) and write them to a JSON file.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="fairseq-preprocess --only-source output directory "
                                     "(dict.txt and SPLIT.bin/.idx)")
    parser.add_argument("--split", default="train", help="binarised split to pack (default: train)")
    parser.add_argument("--tokens-per-sample", type=int, required=True, metavar="L",
                        help="segment length: must equal the training --tokens-per-sample")
    parser.add_argument("--k", type=int, default=20,
                        help="BM25 neighbours retrieved per segment (default: 20)")
    parser.add_argument("--batch-size", type=int, required=True, metavar="B",
                        help="segments per batch (the training --batch-size)")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the chain's random restarts (default: 1)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="where to write the batches (JSON; written atomically)")
    parser.add_argument("--k1", type=float, default=1.5, metavar="k1",
                        help="BM25 k1 (default: 1.5)")
    parser.add_argument("--b", type=float, default=0.75, metavar="b",
                        help="BM25 b (default: 0.75)")
    parser.add_argument("--backend", default="matrix", choices=BACKENDS,
                        help="how the exact BM25 scores are computed: matrix (dense + sparse "
                             "products, fast) or bm25s (the bm25s library, slow on large data); "
                             "same neighbours")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.data):
        parser.error(f"data directory {args.data!r} does not exist")
    if not os.path.isfile(os.path.join(args.data, "dict.txt")):
        parser.error(f"no dict.txt in {args.data!r}: point DATA at the --destdir of "
                     "`fairseq-preprocess --only-source --trainpref TEXT --destdir DATA`")
    if not os.path.isfile(os.path.join(args.data, args.split + ".bin")):
        parser.error(f"no {args.split}.bin/.idx in {args.data!r}: binarise that split with "
                     "fairseq-preprocess, or choose another --split")
    for name, value in (("--tokens-per-sample", args.tokens_per_sample), ("--k", args.k),
                        ("--batch-size", args.batch_size)):
        if value < 1:
            parser.error(f"{name} must be >= 1, got {value}")
    if args.k1 < 0 or not 0 <= args.b <= 1:
        parser.error(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1 = {args.k1}, b = {args.b}")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        parser.error(f"output directory {out_dir!r} does not exist")

    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO)
    from fairseq.data import Dictionary

    from trime.vocab import dictionary_checksum

    started = time.perf_counter()
    dictionary = Dictionary.load(os.path.join(args.data, "dict.txt"))
    segments = segment_token_ids(args.data, args.split, args.tokens_per_sample, dictionary)
    num = len(segments)
    logger.info(f"{num:,} segments of {args.tokens_per_sample} tokens "
                f"({sum(len(s) for s in segments):,} tokens) from {args.data}/{args.split} "
                f"in {time.perf_counter() - started:.1f} s")
    if num < 2:
        parser.error(f"{args.split} has {num} segment(s) of {args.tokens_per_sample} tokens: "
                     "nothing to pack")
    k = min(args.k, num - 1)
    if k < args.k:
        logger.warning(f"--k {args.k} > {num - 1} other segments: using k = {k}")

    timings = {}
    excluded = special_token_ids(dictionary)
    neighbours = bm25_neighbours(segments, k, args.k1, args.b, exclude_ids=excluded,
                                 backend=args.backend, progress=True, timings=timings)
    logger.info(f"BM25 neighbours (k = {k}, backend {args.backend}): index "
                f"{timings['index']:.1f} s, retrieval and top-k {timings['retrieval']:.1f} s")
    chain_started = time.perf_counter()
    order = bm25_chain(neighbours, args.seed)
    batches = chain_batches(order, args.batch_size)
    followed = np.mean([b in neighbours[a] for a, b in zip(order, order[1:])]) if num > 1 else 0
    logger.info(f"Algorithm 1 chain in {time.perf_counter() - chain_started:.1f} s: "
                f"{followed:.1%} of its steps go to a BM25 neighbour; {len(batches):,} batches "
                f"of {args.batch_size} segments")
    save_bm25_batches(
        args.output, batches, data=args.data, split=args.split,
        tokens_per_sample=args.tokens_per_sample, num_segments=num,
        dictionary_checksum=dictionary_checksum(dictionary), k=k, k1=args.k1, b=args.b,
        excluded_tokens=[dictionary[i] for i in excluded], backend=args.backend,
        seed=args.seed, batch_size=args.batch_size,
        neighbour_seconds=round(timings["index"] + timings["retrieval"], 2))
    logger.info(f"wrote {args.output} in {time.perf_counter() - started:.1f} s in all")


if __name__ == "__main__":
    main()
