"""Datastores written as knnlm, adaptive-knn-mt (the TRIME authors' MT fork) and knn-box write
them (np.memmap "w+", no .npy header; read from their code, not copied), for the import tests."""

import json
import os

import numpy as np


def write_knnlm(prefix, keys, values, fp16):
    """knnlm eval_lm.py --save-knnlm-dstore: keys [size, dim], vals [size, 1]; --dstore-fp16 ->
    float16 keys and int16 values, else float32 and int64."""
    stored_keys = np.memmap(f"{prefix}_keys.npy", dtype=np.float16 if fp16 else np.float32,
                            mode="w+", shape=keys.shape)
    stored_values = np.memmap(f"{prefix}_vals.npy", dtype=np.int16 if fp16 else np.int64,
                              mode="w+", shape=(len(values), 1))
    stored_keys[:] = keys
    stored_values[:] = values.reshape(-1, 1)
    stored_keys.flush()
    stored_values.flush()


def write_knn_mt(folder, keys, values, fp16=True):
    """adaptive-knn-mt / TRIME MT fork save_datastore.py: DIR/keys.npy, DIR/vals.npy (int64)."""
    os.makedirs(folder, exist_ok=True)
    stored_keys = np.memmap(os.path.join(folder, "keys.npy"), mode="w+", shape=keys.shape,
                            dtype=np.float16 if fp16 else np.float32)
    stored_values = np.memmap(os.path.join(folder, "vals.npy"), dtype=np.int64, mode="w+",
                              shape=(len(values), 1))
    stored_keys[:] = keys
    stored_values[:] = values.reshape(-1, 1)
    del stored_keys, stored_values


def write_knn_box(folder, keys, values):
    """knn-box Datastore.dump: Memmap files preallocated (300,000 rows), then trimmed to the
    rows added; config.json with knn-box's dtype strings (str of the Python / numpy type)."""
    os.makedirs(folder)
    for name, data, dtype in (("vals", values, np.int64), ("keys", keys, np.float16)):
        path = os.path.join(folder, name + ".npy")
        prealloc = np.memmap(path, dtype=dtype, mode="w+", shape=(300000,) + data.shape[1:])
        prealloc[:len(data)] = data
        prealloc.flush()
        del prealloc
        with open(path, "r+b") as f:  # drop_redundant: resize the file to the rows added
            f.truncate(data.size * np.dtype(dtype).itemsize)
    config = {"data_list": ["vals", "keys"], "data_infos": {
        "vals": {"name": "vals", "shape": [len(values)], "dtype": "<class 'int'>"},
        "keys": {"name": "keys", "shape": list(keys.shape), "dtype": "<class 'numpy.float16'>"}}}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=6)


def write_knnlm_index(path, keys, metric="l2", added=None):
    """build_dstore.py / train_datastore_gpu.py: IndexIVFPQ (8-bit codes), ids added as rows."""
    import faiss

    dim = keys.shape[1]
    quantizer = faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim)
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    index = faiss.IndexIVFPQ(quantizer, dim, 4, 4, 8, faiss_metric)  # small: 4 lists, 4 codes
    index.train(keys.astype(np.float32))
    added = len(keys) if added is None else added
    index.add_with_ids(keys[:added].astype(np.float32), np.arange(added))
    faiss.write_index(index, str(path))
