"""The math of TRIME as pure functions: torch / numpy in, torch / numpy out.

Nothing in ``trime.core`` imports fairseq (a test checks it), and its errors speak of the
math, not of command-line flags: the glue (``trime.glue``, ``trime.lm``) checks the options,
with errors that name the flag and the fix, and calls these.

- ``visibility``: which memory entries a query may see (local, long, ext, eval window + FIFO);
- ``memory_lse``: the chunked memory log-sum-exp op with its own backward (the kernel seam);
- ``objective``: the training objective, Eq. 5, over a batch laid out for a memory rule;
- ``mixtures``: evaluation distributions, Eq. 6-9, kNN-LM, continuous cache;
- ``target_stats``: per-token statistics giving log P(w*) for any λ and temperature;
- ``fifo``: evaluation-time long memory and stream-order scoring;
- ``documents``, ``batching``, ``bm25``: documents, batch plans (Fig. 2), BM25 (Algorithm 1);
- ``grids``: whether a tuned optimum sits on a grid's edge, and how to widen the grid.
"""
