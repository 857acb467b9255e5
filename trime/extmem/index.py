"""FAISS indexes over a datastore (``trime-build-index``) and loading them for evaluation.

Exact search (``Flat``) for small datastores; ``IVFPQ`` (inverted lists + product
quantisation, as in kNN-LM and the paper's external memory: 4,096 lists, 64-byte
codes, nprobe 32) for large ones. The index is saved inside the datastore folder
as ``index.{metric}.faiss`` with ``index.{metric}.json`` describing it; FAISS ids
are datastore rows.
"""

import json
import logging
import math
import os
import time

import numpy as np

from trime.extmem.datastore import Datastore
from trime.files import open_whole, written_whole

logger = logging.getLogger(__name__)

METRICS = ("ip", "l2")
INDEX_TYPES = ("auto", "flat", "ivfpq")
FLAT_UP_TO = 500_000  # index type auto: exact search up to this many keys
PQ_BITS = (4, 8)


def index_paths(datastore_dir: str, metric: str):
    return (os.path.join(datastore_dir, f"index.{metric}.faiss"),
            os.path.join(datastore_dir, f"index.{metric}.json"))


def _faiss():
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("trime's external memory needs FAISS: pip install faiss-cpu "
                          "(or trime[gpu] for faiss-gpu)") from error
    return faiss


def gpu_available() -> bool:
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def default_ivfpq(num_keys: int, dim: int):
    """(nlist, M): about 4·√N inverted lists (a power of two, 64 to 4,096) and the largest
    number of sub-quantisers ≤ 64 that divides d."""
    nlist = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(num_keys))))
    nlist = int(min(4096, max(64, nlist)))
    num_sub = max(m for m in range(1, min(64, dim) + 1) if dim % m == 0)
    return nlist, num_sub


def _keys_fp32(datastore: Datastore, rows) -> np.ndarray:
    return np.ascontiguousarray(datastore.keys[rows], dtype=np.float32)


def default_pq_bits(use_gpu: bool) -> int:
    """Bits per PQ code when none is asked for: 4 on CPU (FAISS fast scan, SIMD), 8 on GPU
    (FAISS's GPU IVFPQ has no 4-bit fast scan)."""
    return 8 if use_gpu else 4


def build_index(datastore: Datastore, metric: str = "ip", index_type: str = "auto",
                nlist: int = None, num_sub: int = None, nbits: int = None,
                train_size: int = 1_000_000, add_chunk: int = 500_000, use_gpu: bool = False,
                seed: int = 1, progress: bool = True, resume: bool = False,
                checkpoint_keys: int = 10_000_000):
    """Build (and return) a FAISS index over every key of ``datastore``; ids = rows.
    ``nbits`` None: ``default_pq_bits`` for the device. ``resume`` (IVFPQ): keep the trained
    index and, every ``checkpoint_keys`` keys added, the partly filled one in the datastore
    folder, and continue from them when started again with the same settings."""
    faiss = _faiss()
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    nbits = default_pq_bits(use_gpu) if nbits is None else nbits
    if nbits not in PQ_BITS:
        raise ValueError(f"PQ codes must have 4 or 8 bits, got {nbits}")
    num_keys, dim = len(datastore), datastore.dim
    if index_type == "auto":
        index_type = "flat" if num_keys <= FLAT_UP_TO else "ivfpq"
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    info = {"metric": metric, "index_type": index_type, "num_keys": num_keys, "dim": dim}
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
    elif index_type == "ivfpq":
        default_nlist, default_sub = default_ivfpq(num_keys, dim)
        nlist, num_sub = nlist or default_nlist, num_sub or default_sub
        if dim % num_sub:
            raise ValueError(f"--pq-m {num_sub} must divide the key dimension {dim}")
        if nbits == 4 and use_gpu:
            raise ValueError("--pq-bits 4 uses FAISS's fast scan, which runs on CPU only: use "
                             "--pq-bits 8 (the default on GPU) with --device gpu, or --device cpu")
        quantizer = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
        if nbits == 4:  # 4-bit codes: FAISS's SIMD "fast scan" (CPU only)
            index = faiss.IndexIVFPQFastScan(quantizer, dim, nlist, num_sub, nbits, faiss_metric)
        else:
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, num_sub, nbits, faiss_metric)
        num_train = min(num_keys, train_size)
        if num_train < max(nlist, 2 ** nbits):
            raise ValueError(
                f"IVFPQ with {nlist} lists and {nbits}-bit codes needs at least "
                f"{max(nlist, 2 ** nbits)} training keys, the datastore has {num_keys}: use "
                "--index-type flat (exact) or smaller --nlist / --pq-bits.")
        info.update(nlist=nlist, pq_m=num_sub, pq_bits=nbits, train_keys=num_train)
    else:
        raise ValueError(f"index type must be one of {INDEX_TYPES}, got {index_type!r}")

    resume = resume and index_type == "ivfpq"
    stages = _stage_paths(datastore.path, metric)
    identity = dict(info, seed=seed)
    restored, first = _restore(stages, identity) if resume else (None, 0)
    gpu_resources = None
    if restored is not None:
        index = restored
    if use_gpu:
        gpu_resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(gpu_resources, 0, index)
    info["built_on"] = "gpu" if use_gpu else "cpu"
    started = time.time()
    if index_type == "ivfpq" and restored is None:
        rows = np.sort(np.random.default_rng(seed).choice(num_keys, num_train, replace=False))
        logger.info(f"training IVFPQ ({nlist} lists, {num_sub} x {nbits}-bit codes, "
                    f"{metric}) on {num_train} random keys")
        index.train(_keys_fp32(datastore, rows))
        logger.info(f"trained in {time.time() - started:.1f} s")
        if resume:
            _write_stage(index, use_gpu, stages["trained"], identity)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_keys, initial=first, desc="adding keys", unit="key", unit_scale=True)
    since_checkpoint = 0
    for start in range(first, num_keys, add_chunk):
        chunk = _keys_fp32(datastore, slice(start, min(num_keys, start + add_chunk)))
        index.add(chunk)
        since_checkpoint += len(chunk)
        if resume and since_checkpoint >= checkpoint_keys and start + len(chunk) < num_keys:
            _write_stage(index, use_gpu, stages["partial"], identity)
            since_checkpoint = 0
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    if use_gpu:
        index = faiss.index_gpu_to_cpu(index)
    info["build_seconds"] = round(time.time() - started, 2)
    return index, info


def _stage_paths(datastore_dir: str, metric: str) -> dict:
    """Where a resumable build keeps its trained and its partly filled index (+ .json each)."""
    index_path, _ = index_paths(datastore_dir, metric)
    return {"trained": index_path + ".trained", "partial": index_path + ".partial"}


def _write_stage(index, on_gpu: bool, path: str, identity: dict) -> None:
    """Save a stage of the build atomically, with the settings it belongs to."""
    faiss = _faiss()
    with written_whole(path) as temporary:
        faiss.write_index(faiss.index_gpu_to_cpu(index) if on_gpu else index, temporary)
    with open_whole(path + ".json") as f:  # after the index: a .json names a complete stage
        json.dump(identity, f)


def _restore(stages: dict, identity: dict):
    """(index, keys already in it) of the furthest stage saved by the same settings, or
    (None, 0)."""
    faiss = _faiss()
    for name in ("partial", "trained"):
        path = stages[name]
        if not (os.path.isfile(path) and os.path.isfile(path + ".json")):
            continue
        with open(path + ".json") as f:
            if json.load(f) != identity:
                logger.warning(f"{path} was saved with other settings: not resumed")
                continue
        index = faiss.read_index(path)
        logger.info(f"resuming the index build from {path}: {index.ntotal:,} keys already added")
        return index, int(index.ntotal)
    return None, 0


def remove_stages(datastore_dir: str, metric: str) -> None:
    """Delete a resumable build's stages once its index is saved."""
    for path in _stage_paths(datastore_dir, metric).values():
        for name in (path, path + ".json"):
            if os.path.exists(name):
                os.remove(name)


def save_index(index, info: dict, datastore_dir: str) -> str:
    """Write ``index.{metric}.faiss`` + ``.json`` atomically (temporary files, then rename)."""
    faiss = _faiss()
    index_path, info_path = index_paths(datastore_dir, info["metric"])
    with written_whole(index_path) as temporary:
        faiss.write_index(index, temporary)
    with open_whole(info_path) as f:
        json.dump(info, f, indent=2)
    remove_stages(datastore_dir, info["metric"])
    return index_path


def load_index(datastore: Datastore, metric: str, nprobe: int = 32, use_gpu: bool = False):
    """The FAISS index of ``datastore`` for ``metric``, checked against it."""
    faiss = _faiss()
    index_path, _ = index_paths(datastore.path, metric)
    if not os.path.isfile(index_path):
        others = [m for m in METRICS if m != metric and os.path.isfile(index_paths(datastore.path, m)[0])]
        hint = f" (there is one for --knn-sim {others[0]})" if others else ""
        raise FileNotFoundError(
            f"no {metric} index in {datastore.path}{hint}: build it with "
            f"`trime-build-index {datastore.path} --metric {metric}`")
    index = faiss.read_index(index_path)
    if not index.is_trained:
        raise ValueError(f"{index_path} is not trained: rebuild it with trime-build-index")
    if index.ntotal != len(datastore) or index.d != datastore.dim:
        raise ValueError(f"{index_path} holds {index.ntotal} keys of dimension {index.d}, the "
                         f"datastore {len(datastore)} of dimension {datastore.dim}: it was built for "
                         "another datastore. Rebuild it with trime-build-index.")
    if nprobe < 1:
        raise ValueError(f"--knn-nprobe must be >= 1, got {nprobe}")
    try:
        faiss.extract_index_ivf(index).nprobe = nprobe
    except (RuntimeError, AttributeError):
        pass  # not an IVF index: exact search
    if use_gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index
