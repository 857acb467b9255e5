"""kNN(M_ext, g(c)) of Eq. 7: the top-K datastore entries of each query, one FAISS search per batch.

Similarities (before any temperature):

- ``ip``: sim = g(c)·g(c_j) / √d, TRIME's similarity (§3), so the retrieved
  entries join Eq. 6 on the same scale as local and long memory;
- ``l2``: sim = -‖g(c) - g(c_j)‖², kNN-LM's.

With an approximate index (IVFPQ) the similarities come from the quantised
codes; ``exact_scores`` recomputes them from the stored fp16 keys instead (the
paper's † rows), at the cost of reading K keys per query from the memmap.
"""

import logging
import math

import numpy as np
import torch

from trime.core.logspace import NEG_INF
from trime.core.mixtures import RetrievedMemory
from trime.extmem.datastore import Datastore

SIMILARITIES = ("ip", "l2")

logger = logging.getLogger(__name__)


class Retriever:
    def __init__(self, datastore: Datastore, index, k: int, similarity: str = "ip",
                 exact_scores: bool = False):
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be ip or l2, got {similarity!r}")
        if not 1 <= k <= len(datastore):
            raise ValueError(f"cannot retrieve {k} entries from a datastore of {len(datastore)} "
                             f"({datastore.path}): k must be in [1, {len(datastore)}]")
        self.datastore, self.index, self.k = datastore, index, int(k)
        self.similarity, self.exact_scores = similarity, exact_scores
        self.values = np.asarray(datastore.values, dtype=np.int64)  # N x 4 bytes, kept in RAM
        self.scale = 1.0 / math.sqrt(datastore.dim)

    def _exact_sims(self, queries: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        keys = torch.from_numpy(self.datastore.keys[rows.reshape(-1)].astype(np.float32))
        keys = keys.view(*rows.shape, -1)
        if self.similarity == "ip":
            return torch.einsum("nd,nkd->nk", queries, keys) * self.scale
        return -((keys - queries[:, None, :]) ** 2).sum(-1)

    def search(self, queries: torch.Tensor, exclude_rows: torch.Tensor = None) -> RetrievedMemory:
        """queries [n, d] → RetrievedMemory with sims / labels [n, K] on the queries' device.

        ``exclude_rows`` [n]: a datastore row each query may not retrieve (its own token when
        the datastore was built from the split being evaluated); one extra entry is searched.
        """
        device = queries.device
        num_queries = queries.shape[0]
        if num_queries == 0:
            empty = torch.zeros(0, self.k, device=device)
            return RetrievedMemory(empty, empty.long())
        queries32 = queries.detach().float().cpu().contiguous()
        searched = self.k + (1 if exclude_rows is not None else 0)
        searched = min(searched, len(self.datastore))
        distances, rows = self.index.search(queries32.numpy(), searched)
        found = rows >= 0  # FAISS returns -1 when fewer than k are found (few probed lists)
        rows = np.where(found, rows, 0)
        if self.exact_scores:
            sims = self._exact_sims(queries32, rows)
        elif self.similarity == "ip":
            sims = torch.from_numpy(distances).float() * self.scale
        else:
            sims = -torch.from_numpy(distances).float()
        sims = sims.masked_fill(torch.from_numpy(~found), NEG_INF)
        rows = torch.from_numpy(rows)
        if exclude_rows is not None:
            sims = sims.masked_fill(rows == exclude_rows.cpu()[:, None], NEG_INF)
        if sims.shape[1] > self.k or self.exact_scores:  # keep the best K (by exact sim if rescored)
            sims, keep = sims.topk(min(self.k, sims.shape[1]), dim=1)
            rows = rows.gather(1, keep)
        labels = torch.from_numpy(self.values[rows.numpy()])
        return RetrievedMemory(sims.to(device), labels.to(device))


def open_retriever(datastore: Datastore, k: int, similarity: str, nprobe: int,
                   exact_scores: bool = False) -> Retriever:
    """The retriever of --knn-k / --knn-sim / --knn-nprobe / --knn-exact-scores over an opened
    datastore and its FAISS index for that similarity (LM and translation tasks alike)."""
    from trime.extmem.index import load_index

    if k > len(datastore):
        raise ValueError(f"--knn-k {k} is larger than the datastore ({len(datastore)} entries in "
                         f"{datastore.path}): use --knn-k {len(datastore)} or less")
    index = load_index(datastore, similarity, nprobe)
    logger.info(f"TRIME: external memory {datastore.path}: {len(datastore)} entries, "
                f"{type(index).__name__}, nprobe {nprobe}")
    return Retriever(datastore, index, k, similarity, exact_scores)
