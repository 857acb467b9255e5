"""kNN(M_ext, g(c)) of Eq. 7: the top-K datastore entries of each query, one FAISS search per batch.

Similarities (before any temperature):

- ``ip``: sim = g(c)·g(c_j) / √d, TRIME's similarity (§3), so the retrieved
  entries join Eq. 6 on the same scale as local and long memory;
- ``l2``: sim = -‖g(c) - g(c_j)‖², kNN-LM's.

With an approximate index (IVFPQ) the similarities come from the quantised
codes; ``exact_scores`` recomputes them from the stored fp16 keys instead (the
paper's † rows), at the cost of reading K keys per query from the memmap.

Where the search runs (``--knn-device``, resolved at the first search from the queries' device):
``cpu`` = the FAISS index on CPU; ``faiss-gpu`` = the index copied to the GPU (faiss-gpu; IVFPQ
with fp16 lookup tables; torch queries searched in place through ``faiss.contrib.torch_utils``);
``torch`` = exact search of the fp16 keys in device memory (``trime.extmem.torch_search``; no
index needed, equals a flat one); ``auto`` = torch on CUDA when the keys take at most a quarter
of the free GPU memory, else faiss-gpu when FAISS sees a GPU, else cpu.
"""

import logging
import math
import os

import numpy as np
import torch

from trime.core.logspace import NEG_INF
from trime.core.mixtures import RetrievedMemory
from trime.extmem.datastore import Datastore

SIMILARITIES = ("ip", "l2")
KNN_DEVICES = ("auto", "cpu", "faiss-gpu", "torch")

logger = logging.getLogger(__name__)


def faiss_gpus() -> int:
    """GPUs FAISS can use (0 with faiss-cpu)."""
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def faiss_to_gpu(index, device: torch.device):
    """(GPU copy of a FAISS index, its resources; keep both alive), fp16 lookup tables."""
    import faiss
    import faiss.contrib.torch_utils  # noqa: F401  index.search(torch tensor) on the GPU

    resources = faiss.StandardGpuResources()
    options = faiss.GpuClonerOptions()
    options.useFloat16 = True  # IVFPQ: fp16 lookup tables
    return faiss.index_cpu_to_gpu(resources, device.index or 0, index, options), resources


class Retriever:
    def __init__(self, datastore: Datastore, index, k: int, similarity: str = "ip",
                 exact_scores: bool = False, device: str = "auto"):
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be ip or l2, got {similarity!r}")
        if device not in KNN_DEVICES:
            raise ValueError(f"--knn-device must be one of {', '.join(KNN_DEVICES)}, got {device!r}")
        if index is None and device != "torch":
            raise ValueError("a retriever without a FAISS index searches with --knn-device torch only")
        if not 1 <= k <= len(datastore):
            raise ValueError(f"cannot retrieve {k} entries from a datastore of {len(datastore)} "
                             f"({datastore.path}): k must be in [1, {len(datastore)}]")
        self.datastore, self.index, self.k = datastore, index, int(k)
        self.similarity, self.exact_scores = similarity, exact_scores
        self.values = np.asarray(datastore.values, dtype=np.int64)  # N x 4 bytes, kept in RAM
        self.scale = 1.0 / math.sqrt(datastore.dim)
        self.device_choice, self.backend = device, None  # resolved at the first search
        self._device_values = self._gpu_resources = None

    def _resolve(self, device: torch.device) -> str:
        """The search backend for queries on ``device`` (once), said in the log."""
        from trime.extmem import torch_search

        choice = self.device_choice
        if choice == "auto":
            if self.index is None:
                choice = "torch"
            elif device.type != "cuda":
                choice = "cpu"
            elif torch_search.fits(self.datastore, device):
                choice = "torch"
            else:
                choice = "faiss-gpu" if faiss_gpus() > 0 else "cpu"
        if choice == "faiss-gpu":
            if device.type != "cuda" or faiss_gpus() == 0:
                raise ValueError("--knn-device faiss-gpu needs CUDA queries and faiss-gpu "
                                 "(pip install trime[gpu]); use --knn-device cpu or torch")
            self.index, self._gpu_resources = faiss_to_gpu(self.index, device)
        if choice == "torch":
            self.index = torch_search.TorchExactSearch.from_datastore(
                self.datastore, self.similarity, device)
            self._device_values = torch.from_numpy(self.values).to(device)
        logger.info(f"TRIME: datastore search on {choice} ({type(self.index).__name__})")
        self.backend = choice
        return choice

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
        backend = self.backend or self._resolve(device)
        if backend in ("torch", "faiss-gpu"):
            return self._search_on_device(queries, exclude_rows)
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

    def _search_on_device(self, queries, exclude_rows):
        """``search`` with the queries left on their GPU (torch or faiss-gpu backend)."""
        searched = min(self.k + (1 if exclude_rows is not None else 0), len(self.datastore))
        distances, rows = self.index.search(queries.detach().float().contiguous(), searched)
        found = rows >= 0
        rows = rows.clamp(min=0)
        if self.exact_scores and self.backend != "torch":  # the torch search is exact already
            keys = self.index_keys(rows)
            sims = (torch.einsum("nd,nkd->nk", queries.float(), keys) * self.scale
                    if self.similarity == "ip" else -((keys - queries.float()[:, None]) ** 2).sum(-1))
        else:
            sims = distances.float() * self.scale if self.similarity == "ip" else -distances.float()
        sims = sims.masked_fill(~found, NEG_INF)
        if exclude_rows is not None:
            sims = sims.masked_fill(rows == exclude_rows.to(rows.device)[:, None], NEG_INF)
        if sims.shape[1] > self.k or self.exact_scores:
            sims, keep = sims.topk(min(self.k, sims.shape[1]), dim=1)
            rows = rows.gather(1, keep)
        if self._device_values is None:
            self._device_values = torch.from_numpy(self.values).to(queries.device)
        return RetrievedMemory(sims.to(queries.device), self._device_values[rows.to(queries.device)])

    def index_keys(self, rows: torch.Tensor) -> torch.Tensor:
        """fp32 keys [n, k, d] of datastore rows, on the rows' device."""
        keys = self.datastore.keys[rows.reshape(-1).cpu().numpy()].astype(np.float32)
        return torch.from_numpy(keys).to(rows.device).view(*rows.shape, -1)


def open_retriever(datastore: Datastore, k: int, similarity: str, nprobe: int,
                   exact_scores: bool = False, device: str = "auto") -> Retriever:
    """The retriever of --knn-k / --knn-sim / --knn-nprobe / --knn-exact-scores / --knn-device
    over an opened datastore and its FAISS index for that similarity (LM and translation tasks
    alike; --knn-device torch needs no index)."""
    from trime.extmem.index import index_paths, load_index

    if k > len(datastore):
        raise ValueError(f"--knn-k {k} is larger than the datastore ({len(datastore)} entries in "
                         f"{datastore.path}): use --knn-k {len(datastore)} or less")
    if device == "torch" and not os.path.isfile(index_paths(datastore.path, similarity)[0]):
        index = None
    else:
        index = load_index(datastore, similarity, nprobe)
    logger.info(f"TRIME: external memory {datastore.path}: {len(datastore)} entries, "
                f"{type(index).__name__ if index is not None else 'no index'}, nprobe {nprobe}")
    return Retriever(datastore, index, k, similarity, exact_scores, device)


def retriever_for(datastore: Datastore, settings) -> Retriever:
    """``open_retriever`` with the --knn-k / --knn-sim / --knn-nprobe / --knn-exact-scores /
    --knn-device of ``settings`` (a ``trime.settings.EvalSettings``; every frontend's)."""
    return open_retriever(datastore, settings.knn_k, settings.knn_sim, settings.knn_nprobe,
                          settings.knn_exact_scores, settings.knn_device)

