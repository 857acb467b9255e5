"""External memory on disk: a datastore of (key, value) pairs (paper §2.2 Eq. 4, §4.3).

A datastore is a folder with

- ``keys.npy``: fp16 [N, d], the key g(c) of every scored token of a split: for a
  language model the input of the last decoder layer's FFN, the same representation
  the TRIME loss uses (``trime.glue.query.LastFFNInput``); for translation the
  ``--mt-key`` representation (``meta["key_type"]``, ``trime.mt.datastore``);
- ``values.npy``: int32 [N], the token that followed each context (int32: the
  public kNN-LM code used int16, which overflows a 267k vocabulary);
- ``meta.json``: N, d, dtypes, key type, dictionary size and checksum, the
  split, the model's fingerprint and the command that built it.

A datastore imported from another toolkit (``trime-import-dstore``, ``trime.extmem.foreign``)
may instead name, in ``meta["keys_file"]``, that toolkit's own headerless fp16 key file,
read in place (no copy of keys that can take hundreds of GB); ``meta["imported"]`` says
where it came from.

Row i holds the token at offset i of the split's token stream, so every scored
token appears exactly once. ``DatastoreWriter`` fills ``DIR.partial/`` and
renames it to ``DIR`` only when every row has been written: an interrupted build
leaves ``DIR.partial`` behind and ``Datastore.open`` refuses it.
"""

import json
import logging
import os
import shutil
from typing import Optional

import numpy as np
import torch
from numpy.lib.format import open_memmap

from trime.extmem.fingerprints import dictionary_checksum, stream_checksum

logger = logging.getLogger(__name__)

FORMAT = "trime-datastore/1"
KEY_TYPE = "last-ffn-input"
KEYS_FILE, VALUES_FILE, META_FILE = "keys.npy", "values.npy", "meta.json"


# how a datastore is made, named by every error that asks for one
HOW_TO_BUILD = ("build one with `fairseq-eval-lm DATA --user-dir \"$(trime-user-dir)\" --task trime_lm "
                "--path CKPT --gen-subset train --tokens-per-sample L --save-dstore DIR` (language "
                "model; L and any --context-window as when scoring) or `trime-mt-datastore DATA --path "
                "CKPT -s S -t T --save-dstore DIR` (translation), then `trime-build-index DIR`")


class DatastoreWriter:
    """Writes a datastore of ``num_tokens`` rows, one batch of scored tokens at a time.

    ``add`` takes each token's stream offset (its row); a row written twice is an
    error. When the last row arrives the memmaps are flushed, ``meta.json`` is
    written and ``DIR.partial`` is renamed to ``DIR``.
    """

    def __init__(self, path: str, num_tokens: int, dim: int, meta: dict, progress: bool = True,
                 key_type: str = KEY_TYPE, keys_file: Optional[str] = None):
        self.path = os.path.abspath(path)
        self.partial = self.path + ".partial"
        if os.path.exists(self.path):
            raise FileExistsError(
                f"datastore {path!r} already exists: remove it or choose another folder "
                "(a datastore is never overwritten in place).")
        if os.path.exists(self.partial):
            logger.warning(f"removing {self.partial}, left by an interrupted datastore build")
            shutil.rmtree(self.partial)
        os.makedirs(self.partial)
        self.num_tokens, self.dim = int(num_tokens), int(dim)
        self.meta = dict(meta, format=FORMAT, num_tokens=self.num_tokens, dim=self.dim,
                         key_dtype="float16", value_dtype="int32", key_type=key_type)
        if keys_file is None:
            self.keys = open_memmap(os.path.join(self.partial, KEYS_FILE), mode="w+",
                                    dtype=np.float16, shape=(self.num_tokens, self.dim))
        else:  # the keys stay in another (headerless fp16) file: ``add`` takes keys=None
            self.keys = None
            self.meta.update(keys_file=os.path.abspath(keys_file), keys_offset=0)
            _raw_keys(self.meta["keys_file"], self.num_tokens, self.dim, path)
        self.values = open_memmap(os.path.join(self.partial, VALUES_FILE), mode="w+",
                                  dtype=np.int32, shape=(self.num_tokens,))
        self.written = np.zeros(self.num_tokens, dtype=bool)
        self.count = 0
        self.complete = False
        self.progress = None
        if progress:
            from tqdm import tqdm

            self.progress = tqdm(total=self.num_tokens, desc="datastore", unit="tok",
                                 unit_scale=True, mininterval=2.0)

    def add(self, rows: torch.Tensor, keys: Optional[torch.Tensor], values: torch.Tensor) -> None:
        """rows [n] stream offsets; keys [n, d] (None when they stay in ``keys_file``); values
        [n] token ids."""
        if self.complete:
            raise RuntimeError(f"datastore {self.path} is complete; nothing more can be added")
        rows = rows.detach().cpu().numpy().astype(np.int64)
        if len(rows) == 0:
            return
        if (keys is None) != (self.keys is None):
            raise ValueError("keys must be given exactly when the datastore writes its own")
        if keys is not None and keys.shape[-1] != self.dim:
            raise ValueError(f"keys of dimension {keys.shape[-1]} for a datastore of dimension {self.dim}")
        if rows.min() < 0 or rows.max() >= self.num_tokens:
            raise ValueError(f"token offsets {rows.min()}..{rows.max()} outside the split's "
                             f"{self.num_tokens} tokens")
        values = values.detach().cpu().numpy().astype(np.int32)
        order = np.argsort(rows, kind="stable")
        rows, values = rows[order], values[order]
        if keys is not None:
            keys = keys.detach().to("cpu", torch.float16).numpy()[order]
        if self.written[rows].any() or (np.diff(rows) == 0).any():
            raise RuntimeError("a token was scored twice while saving the datastore; every token "
                               "of the split must be scored exactly once, in one process")
        if rows[-1] - rows[0] + 1 == len(rows):  # a contiguous run (stream order): one copy
            rows = slice(rows[0], rows[-1] + 1)
        if keys is not None:
            self.keys[rows] = keys
        self.values[rows] = values
        self.written[rows] = True
        self.count += len(values)
        if self.progress is not None:
            self.progress.update(len(values))
        if self.count == self.num_tokens:
            self._finish()

    def _finish(self) -> None:
        if self.keys is not None:
            self.keys.flush()
        self.values.flush()
        del self.keys, self.values
        self.meta["values_checksum"] = stream_checksum(
            np.load(os.path.join(self.partial, VALUES_FILE), mmap_mode="r"))
        with open(os.path.join(self.partial, META_FILE), "w") as f:
            json.dump(self.meta, f, indent=2)
        os.replace(self.partial, self.path)
        self.complete = True
        if self.progress is not None:
            self.progress.close()
        logger.info(f"TRIME: datastore of {self.num_tokens} keys (d = {self.dim}) saved to {self.path}")


def _raw_keys(keys_file: str, num_tokens: int, dim: int, datastore: str, offset: int = 0):
    """The headerless fp16 [num_tokens, dim] key file another toolkit wrote, memory-mapped."""
    expected = offset + num_tokens * dim * 2
    if not os.path.isfile(keys_file):
        raise FileNotFoundError(f"datastore {datastore} reads its keys from {keys_file}, which is "
                                "gone: put it back, or import the datastore again (trime-import-"
                                "dstore ... --keys copy makes a folder that needs no other file)")
    if os.path.getsize(keys_file) != expected:
        raise ValueError(f"{keys_file} holds {os.path.getsize(keys_file):,} bytes, {expected:,} "
                         f"expected for {num_tokens:,} fp16 keys of dimension {dim}: it is not "
                         f"the key file datastore {datastore} was made from. Import it again.")
    return np.memmap(keys_file, dtype=np.float16, mode="r", shape=(num_tokens, dim), offset=offset)


class Datastore:
    """A complete datastore, opened read-only with its files memory-mapped."""

    def __init__(self, path: str, meta: dict, keys: np.ndarray, values: np.ndarray):
        self.path, self.meta, self.keys, self.values = path, meta, keys, values

    def __len__(self) -> int:
        return int(self.meta["num_tokens"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @classmethod
    def open(cls, path: str, dictionary=None, dim: Optional[int] = None) -> "Datastore":
        """Open and check a datastore; ``dictionary`` / ``dim``: those of the model that will use it."""
        path = os.path.abspath(path)
        if not os.path.isdir(path):
            if os.path.isdir(path + ".partial"):
                raise ValueError(f"datastore {path} is incomplete: its build was interrupted "
                                 f"({path}.partial is left). Remove {path}.partial and "
                                 + HOW_TO_BUILD.replace("build one", "build it again", 1))
            raise FileNotFoundError(f"no datastore at {path}: {HOW_TO_BUILD}")
        meta_path = os.path.join(path, META_FILE)
        if not os.path.isfile(meta_path):
            if not any(os.path.exists(os.path.join(path, name)) for name in (KEYS_FILE, VALUES_FILE)):
                raise ValueError(f"{path} is not a trime datastore (no {META_FILE}, {KEYS_FILE} or "
                                 f"{VALUES_FILE}): {HOW_TO_BUILD}")
            raise ValueError(f"{path} has no {META_FILE}: not a complete trime datastore. "
                             f"Remove it and {HOW_TO_BUILD}")
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path} is not a {FORMAT} datastore (format = {meta.get('format')!r})")
        num_tokens, stored_dim = int(meta["num_tokens"]), int(meta["dim"])
        keys = None
        if meta.get("keys_file"):  # imported: another toolkit's key file, its errors say so
            keys = _raw_keys(meta["keys_file"], num_tokens, stored_dim, path,
                             int(meta.get("keys_offset", 0)))
        try:
            if keys is None:
                keys = np.load(os.path.join(path, KEYS_FILE), mmap_mode="r")
            values = np.load(os.path.join(path, VALUES_FILE), mmap_mode="r")
        except (ValueError, OSError) as error:
            raise ValueError(f"datastore {path} is damaged (truncated or missing key/value file: "
                             f"{error}). Remove it and {HOW_TO_BUILD}") from error
        if keys.shape != (num_tokens, stored_dim) or values.shape != (num_tokens,):
            raise ValueError(f"datastore {path}: keys {keys.shape} / values {values.shape} do not "
                             f"match meta.json ({num_tokens} x {stored_dim}). Remove it and {HOW_TO_BUILD}")
        if dictionary is not None:
            if (meta["dictionary_size"] != len(dictionary)
                    or meta["dictionary_checksum"] != dictionary_checksum(dictionary)):
                raise ValueError(
                    f"datastore {path} was built with another dictionary ({meta['dictionary_size']} "
                    f"words, checksum {meta['dictionary_checksum']}) than this model's "
                    f"({len(dictionary)} words, {dictionary_checksum(dictionary)}): its values are "
                    "not this model's token ids. Binarise the datastore corpus with the model's "
                    "dict.txt (fairseq-preprocess --srcdict) and rebuild the datastore.")
        if dim is not None and dim != stored_dim:
            raise ValueError(f"datastore {path} holds keys of dimension {stored_dim}, this model's "
                             f"g(c) has dimension {dim}: it was built with another model. Rebuild it "
                             "with this checkpoint (fairseq-eval-lm --save-dstore).")
        return cls(path, meta, keys, values)
