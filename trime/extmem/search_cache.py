"""A FAISS index whose searches are remembered per query, for grids that decode the same split
again and again (``trime-mt-tune``): every grid point's beams revisit the prefixes that others
have searched already.

``CachedSearch(index, depth).search(x, n)`` answers like ``index.search(x, n)`` (it stands in for
the index in ``Retriever``): each query row is searched once at ``depth`` and later answered from
its first ``n`` results. That equals a search at ``n`` for flat and IVF indexes at a fixed
``nprobe`` (the same candidates, ranked by the same distances; ties aside) — not for graph indexes
such as HNSW, which are refused. A query is known by its exact bytes, so a query that differs in
the last bit (computed in another batch shape) is a miss, never a wrong answer.
"""

import numpy as np


class CachedSearch:
    def __init__(self, index, depth: int):
        if "HNSW" in type(index).__name__:
            raise ValueError(f"{type(index).__name__}: a graph index's top-n is not a prefix of its "
                             "top-depth; tune with a flat or IVF index")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.index, self.depth = index, int(depth)
        self.d = index.d
        self._found = {}  # query bytes -> (distances [depth], rows [depth])
        self.hits = self.misses = 0

    def search(self, queries: np.ndarray, n: int):
        if n > self.depth:
            return self.index.search(queries, n)
        keys = [row.tobytes() for row in queries]
        new = list(dict.fromkeys(key for key in keys if key not in self._found))
        if new:
            rows = np.stack([np.frombuffer(key, dtype=queries.dtype) for key in new])
            distances, found = self.index.search(np.ascontiguousarray(rows), self.depth)
            self._found.update(zip(new, zip(distances, found)))
        self.misses += len(new)
        self.hits += len(keys) - len(new)
        distances = np.stack([self._found[key][0][:n] for key in keys])
        rows = np.stack([self._found[key][1][:n] for key in keys])
        return distances, rows

    @property
    def hit_rate(self) -> float:
        asked = self.hits + self.misses
        return self.hits / asked if asked else 0.0
