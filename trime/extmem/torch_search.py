"""Exact datastore search in torch, on the queries' device (``--knn-device torch``).

The datastore's fp16 keys are copied once into device memory; a search multiplies the queries
with them block by block in fp32 and keeps a running top-k, so the queries never leave the GPU
and no FAISS index is needed. Answers like a flat FAISS index of the same metric (distances in
FAISS's convention: inner products for ``ip``, squared L2 distances for ``l2``), as tensors on
the device. Meant for datastores whose keys fit in device memory (a few million keys);
``fits`` says whether they do.
"""

import numpy as np
import torch

# at most this many scores [queries x keys] in one block (fp32: 1 GiB)
SCORES_PER_BLOCK = 2 ** 28


def key_bytes(datastore) -> int:
    return len(datastore) * datastore.dim * 2


def fits(datastore, device: torch.device, share: float = 0.25) -> bool:
    """Whether the fp16 keys take at most ``share`` of the device's free memory."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return key_bytes(datastore) <= share * free


class TorchExactSearch:
    searches_tensors = True  # Retriever: hand it the queries as they are, get tensors back

    def __init__(self, keys: torch.Tensor, metric: str):
        if metric not in ("ip", "l2"):
            raise ValueError(f"metric must be ip or l2, got {metric!r}")
        self.keys, self.metric = keys, metric
        self.d = keys.shape[1]
        # ‖k‖² once, for l2 = ‖q‖² - 2 q·k + ‖k‖²
        self.key_norms = (keys.float() ** 2).sum(-1) if metric == "l2" else None

    @classmethod
    def from_datastore(cls, datastore, metric: str, device, rows_per_copy: int = 1 << 20):
        keys = torch.empty(len(datastore), datastore.dim, dtype=torch.float16, device=device)
        for start in range(0, len(datastore), rows_per_copy):
            block = np.ascontiguousarray(datastore.keys[start:start + rows_per_copy])
            keys[start:start + len(block)] = torch.from_numpy(block.astype(np.float16)).to(device)
        return cls(keys, metric)

    def search(self, queries: torch.Tensor, k: int):
        """(distances, rows) [n, k] on the keys' device: the k best keys of each query."""
        queries = queries.detach().to(self.keys.device, torch.float32)
        n, num_keys = queries.shape[0], self.keys.shape[0]
        k = min(k, num_keys)
        block = max(k, SCORES_PER_BLOCK // max(n, 1))
        largest = self.metric == "ip"
        best_scores = best_rows = None
        for start in range(0, num_keys, block):
            keys = self.keys[start:start + block].float()
            scores = queries @ keys.t()  # [n, block]
            if self.metric == "l2":
                scores = (queries ** 2).sum(-1, keepdim=True) - 2 * scores \
                    + self.key_norms[None, start:start + block]
            top = scores.topk(min(k, scores.shape[1]), dim=1, largest=largest)
            rows = top.indices + start
            if best_scores is not None:  # merge with the best so far
                scores_both = torch.cat([best_scores, top.values], 1)
                rows_both = torch.cat([best_rows, rows], 1)
                keep = scores_both.topk(k, dim=1, largest=largest).indices
                best_scores, best_rows = scores_both.gather(1, keep), rows_both.gather(1, keep)
            else:
                best_scores, best_rows = top.values, rows
        return best_scores, best_rows
