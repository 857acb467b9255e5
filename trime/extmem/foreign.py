"""Datastores written by other kNN toolkits, read as they wrote them (``trime-import-dstore``).

Three layouts, all headerless ``np.memmap`` files (no ``.npy`` header despite the name), one row
per target token, ids of their FAISS indexes = rows (``add_with_ids(keys, arange(...))``):

- ``knnlm`` (urvashik/knnlm, ``eval_lm.py --save-knnlm-dstore --dstore-mmap PREFIX``):
  ``PREFIX_keys.npy`` [size, dim] and ``PREFIX_vals.npy`` [size, 1]; with ``--dstore-fp16`` the
  keys are float16 and the values **int16** (a token id above 32,767 wraps to a negative
  number), without it float32 and int64. Keys are ``--knn-keytype last_ffn_input`` (their
  README's datastore), the same g(c) as trime's language models.
- ``knn-mt`` (zhengxxn/adaptive-knn-mt and the TRIME authors' ``machine_translation/``
  fork, ``save_datastore.py --dstore-mmap DIR``): ``DIR/keys.npy`` [size, dim] (float16 with
  ``--dstore-fp16``, else float32) and ``DIR/vals.npy`` [size, 1] int64; keys are the decoder's
  output features (trime's ``--mt-key final``); FAISS index ``DIR/knn_index_{l2,ip}``.
- ``knn-box`` (NJUNLP/knn-box ``Datastore.dump``): ``DIR/keys.npy`` float16 [N, dim] and
  ``DIR/vals.npy`` int64 [N], shapes and dtypes in ``DIR/config.json``; keys are the decoder's
  output features; FAISS index ``DIR/keys.faiss_index``.

``import_datastore`` writes trime's format (``trime.extmem.datastore``): int32 values, checked
against the dictionary, and fp16 keys, copied in chunks or (fp16 sources) read in place.
Nothing here imports fairseq: the caller passes the dictionary's size and checksum.
"""

import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass

import numpy as np
import torch

from trime.extmem.datastore import DatastoreWriter, checked_memmap
from trime.extmem.index import index_paths
from trime.files import written_whole

logger = logging.getLogger(__name__)

FORMATS = ("knnlm", "knn-mt", "knn-box")
KEYS_MODES = ("auto", "copy", "link")
INT16_MAX = np.iinfo(np.int16).max  # 32,767
CHUNK_ROWS = 1 << 18


@dataclass
class ForeignDatastore:
    """A datastore as another toolkit wrote it, memory-mapped read-only."""

    format: str
    keys: np.ndarray  # [N, d] float16 or float32
    values: np.ndarray  # [N] integer token ids, as stored (int16 or int64)
    keys_file: str
    values_file: str
    kind: str  # "lm" or "translation"

    def __len__(self) -> int:
        return len(self.values)

    @property
    def dim(self) -> int:
        return int(self.keys.shape[1])


def _size_hint(keys_file: str, values_file: str, dim: int, value_dtypes) -> str:
    """What the two files' sizes say (rows for each key / value dtype), for a wrong --dstore-size,
    --dim or --dstore-fp16."""
    if not (os.path.isfile(keys_file) and os.path.isfile(values_file)):
        return ""
    key_bytes, value_bytes = os.path.getsize(keys_file), os.path.getsize(values_file)
    readings = []
    for fp16, value_dtype in zip((True, False), value_dtypes):
        rows = key_bytes / (dim * (2 if fp16 else 4))
        if rows == value_bytes / np.dtype(value_dtype).itemsize and rows.is_integer():
            readings.append(f"--dstore-size {int(rows)}" + (" --dstore-fp16" if fp16 else ""))
    if readings:
        return f"with --dim {dim}, the files fit {' or '.join(readings)}"
    return f"no --dstore-size fits both files with --dim {dim}: check --dim"


def open_knnlm(prefix: str, size: int, dim: int, fp16: bool) -> ForeignDatastore:
    """knnlm's ``PREFIX_keys.npy`` / ``PREFIX_vals.npy`` (their ``--dstore-filename PREFIX``)."""
    keys_file, values_file = prefix + "_keys.npy", prefix + "_vals.npy"
    value_dtype = np.int16 if fp16 else np.int64
    fix = ("give knnlm's --dstore-size, --dim and --dstore-fp16 as the datastore was saved ("
           + _size_hint(keys_file, values_file, dim, (np.int16, np.int64)) + ")")
    keys = checked_memmap(keys_file, np.float16 if fp16 else np.float32, (size, dim), fix)
    values = checked_memmap(values_file, value_dtype, (size, 1), fix)[:, 0]
    return ForeignDatastore("knnlm", keys, values, keys_file, values_file, "lm")


def open_knn_mt(folder: str, size: int, dim: int, fp16: bool) -> ForeignDatastore:
    """adaptive-knn-mt's / the TRIME MT fork's ``DIR/keys.npy`` / ``DIR/vals.npy``."""
    keys_file, values_file = os.path.join(folder, "keys.npy"), os.path.join(folder, "vals.npy")
    fix = ("give --dstore-size, --dim and --dstore-fp16 as save_datastore.py was run ("
           + _size_hint(keys_file, values_file, dim, (np.int64, np.int64)) + ")")
    keys = checked_memmap(keys_file, np.float16 if fp16 else np.float32, (size, dim), fix)
    values = checked_memmap(values_file, np.int64, (size, 1), fix)[:, 0]
    return ForeignDatastore("knn-mt", keys, values, keys_file, values_file, "translation")


def _knn_box_dtype(text: str):
    """knn-box's config.json dtype strings: ``<class 'numpy.float16'>``, ``<class 'int'>`` ..."""
    for name in ("float16", "float32"):
        if name in text:
            return np.dtype(name)
    if "int" in text:  # knn-box stores every integer type as Python int = int64
        return np.dtype(np.int64)
    raise ValueError(f"knn-box dtype {text!r} is not one trime reads (float16, float32, int)")


def open_knn_box(folder: str) -> ForeignDatastore:
    """knn-box's datastore folder: ``config.json`` + ``keys.npy`` + ``vals.npy``."""
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{folder} has no config.json: not a datastore written by knn-box "
                                "(Datastore.dump). For knnlm or adaptive-knn-mt files use "
                                "--format knnlm / knn-mt")
    with open(config_file) as f:
        infos = json.load(f).get("data_infos", {})
    if "keys" not in infos or "vals" not in infos:
        raise ValueError(f"{config_file} lists no 'keys' and 'vals' data (has: {sorted(infos)})")
    arrays = {}
    for name in ("keys", "vals"):
        info = infos[name]
        arrays[name] = checked_memmap(os.path.join(folder, name + ".npy"), _knn_box_dtype(info["dtype"]),
                               info["shape"], f"it does not match {config_file}")
    keys, values = arrays["keys"], arrays["vals"].reshape(len(arrays["vals"]))
    if keys.ndim != 2 or len(keys) != len(values):
        raise ValueError(f"{config_file}: keys {keys.shape} and vals {values.shape} are not one "
                         "row per token")
    return ForeignDatastore("knn-box", keys, values, os.path.join(folder, "keys.npy"),
                            os.path.join(folder, "vals.npy"), "translation")


def check_values(foreign: ForeignDatastore, dictionary_size: int, chunk_rows: int = CHUNK_ROWS):
    """Refuse values that are not token ids of a dictionary of ``dictionary_size`` symbols."""
    if foreign.values.dtype == np.int16 and dictionary_size > INT16_MAX:
        raise ValueError(
            f"{foreign.values_file} stores token ids as int16 (knnlm's --dstore-fp16), and the "
            f"dictionary has {dictionary_size:,} words: every id above {INT16_MAX:,} was written "
            "as a negative number (the known int16 overflow of knnlm's datastore) and cannot be "
            "recovered. Save the datastore again without --dstore-fp16 (int64 values), or build "
            "it with trime: fairseq-eval-lm --save-dstore.")
    bad, first = 0, None
    for start in range(0, len(foreign), chunk_rows):
        chunk = np.asarray(foreign.values[start:start + chunk_rows], dtype=np.int64)
        outside = np.flatnonzero((chunk < 0) | (chunk >= dictionary_size))
        if len(outside):
            bad += len(outside)
            if first is None:
                first = (start + int(outside[0]), int(chunk[outside[0]]))
    if bad:
        raise ValueError(
            f"{foreign.values_file}: {bad:,} of {len(foreign):,} values are not token ids of the "
            f"{dictionary_size:,}-word dictionary (row {first[0]:,} holds {first[1]:,}): the "
            "datastore was built with another dictionary (pass the model's dict.txt to --dict), "
            "or --dstore-size / --dstore-fp16 read the files wrongly.")


def _free_bytes(path: str) -> int:
    return shutil.disk_usage(os.path.dirname(os.path.abspath(path)) or ".").free


def import_datastore(foreign: ForeignDatastore, out: str, meta: dict, key_type: str,
                     keys_mode: str = "auto", chunk_rows: int = CHUNK_ROWS,
                     progress: bool = True) -> str:
    """Write ``foreign`` as a trime datastore at ``out``; returns its folder.

    ``meta``: the dictionary's size and checksum and whatever else the frontend records.
    ``keys_mode``: ``copy`` = fp16 keys inside ``out`` (float32 sources need it); ``link`` =
    read the source's fp16 key file in place (no second copy on disk; it must stay where it is);
    ``auto`` = link fp16 keys, copy float32 ones.
    """
    if keys_mode not in KEYS_MODES:
        raise ValueError(f"keys mode must be one of {KEYS_MODES}, got {keys_mode!r}")
    fp16 = foreign.keys.dtype == np.float16
    if keys_mode == "link" and not fp16:
        raise ValueError(f"{foreign.keys_file} holds float32 keys: trime reads fp16 keys, so they "
                         "must be converted and copied (--keys copy or auto)")
    link = keys_mode == "link" or (keys_mode == "auto" and fp16)
    check_values(foreign, int(meta["dictionary_size"]), chunk_rows)
    needed = len(foreign) * 4 + (0 if link else len(foreign) * foreign.dim * 2)
    if needed > _free_bytes(out):
        raise OSError(f"importing needs {needed / 2**30:.1f} GiB next to {out}, "
                      f"{_free_bytes(out) / 2**30:.1f} GiB are free"
                      + ("" if link or not fp16 else
                         " (--keys link reads the fp16 keys in place and needs only the values)"))
    provenance = {"format": foreign.format, "keys_file": os.path.abspath(foreign.keys_file),
                  "values_file": os.path.abspath(foreign.values_file),
                  "key_dtype": foreign.keys.dtype.name, "value_dtype": foreign.values.dtype.name,
                  "keys": "read in place" if link else "copied", "command": " ".join(sys.argv)}
    writer = DatastoreWriter(out, len(foreign), foreign.dim, dict(meta, imported=provenance),
                             progress=progress, key_type=key_type,
                             keys_file=foreign.keys_file if link else None)
    for start in range(0, len(foreign), chunk_rows):
        stop = min(len(foreign), start + chunk_rows)
        keys = None
        if not link:
            keys = torch.from_numpy(np.array(foreign.keys[start:stop], dtype=np.float32))
            if not torch.isfinite(keys).all() or keys.abs().max() > np.finfo(np.float16).max:
                raise ValueError(f"{foreign.keys_file}: rows {start:,}..{stop - 1:,} hold keys "
                                 "that are not finite in fp16 (NaN, inf or above 65,504)")
        writer.add(torch.arange(start, stop), keys,
                   torch.from_numpy(np.array(foreign.values[start:stop], dtype=np.int64)))
    assert writer.complete
    return writer.path


def index_metric(index) -> str:
    """``ip`` or ``l2``: the metric a FAISS index searches (trime's --knn-sim)."""
    import faiss

    metrics = {faiss.METRIC_INNER_PRODUCT: "ip", faiss.METRIC_L2: "l2"}
    if index.metric_type not in metrics:
        raise ValueError(f"a FAISS index of metric type {index.metric_type}: trime searches "
                         "inner product (ip) or L2 only")
    return metrics[index.metric_type]


def _read_index(index_file: str):
    import faiss

    if not os.path.isfile(index_file):
        raise FileNotFoundError(f"no FAISS index at {index_file}")
    try:  # inverted lists memory-mapped: checking a 100M-key index reads only its header
        return faiss.read_index(index_file, faiss.IO_FLAG_MMAP)
    except RuntimeError:
        return faiss.read_index(index_file)


def check_index(index_file: str, num_keys: int, dim: int) -> str:
    """The metric (``ip`` / ``l2``) of another toolkit's trained FAISS index, refused unless it
    is the finished index of ``num_keys`` keys of dimension ``dim`` (its ids must be rows, as
    knnlm, adaptive-knn-mt and knn-box add them)."""
    index = _read_index(index_file)
    metric = index_metric(index)
    rebuild = "Drop --index and run trime-build-index on the imported datastore."
    if index.d != dim:
        raise ValueError(f"{index_file} indexes vectors of dimension {index.d}, the datastore's "
                         f"keys have {dim}: it was built over other keys. {rebuild}")
    if not index.is_trained or index.ntotal != num_keys:
        raise ValueError(f"{index_file} holds {index.ntotal:,} keys "
                         f"({'trained' if index.is_trained else 'untrained'}), the datastore "
                         f"{num_keys:,}: it is not the finished index of these keys (knnlm's "
                         f"build_dstore.py writes a partial index every million keys). {rebuild}")
    return metric


def place_index(index_file: str, datastore_dir: str) -> str:
    """Put a checked index (``check_index``) into a trime datastore folder as
    ``index.{metric}.faiss`` + ``.json``: a hard link where the file system allows, else a
    copy. Returns the metric."""
    import faiss

    index = _read_index(index_file)
    metric = index_metric(index)
    index_path, info_path = index_paths(datastore_dir, metric)
    with written_whole(index_path) as temporary:
        try:
            os.link(index_file, temporary)
        except OSError:
            shutil.copyfile(index_file, temporary)
    info = {"metric": metric, "index_type": type(faiss.downcast_index(index)).__name__,
            "num_keys": int(index.ntotal), "dim": int(index.d),
            "imported_from": os.path.abspath(index_file)}
    with open(info_path, "w") as f:
        json.dump(info, f, indent=2)
    return metric
