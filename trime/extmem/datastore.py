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
leaves ``DIR.partial`` behind, ``Datastore.open`` refuses it, and the same build
started again continues it. A shard (``meta["shard"]``: rows ``row_start`` ..
``row_end - 1`` of a split of ``total_rows``) holds a contiguous part of a split;
``trime-merge-dstore`` (``merge_shards``) joins the shards of a split into one.
"""

import json
import logging
import os
from typing import Optional

import numpy as np
import torch
from numpy.lib.format import open_memmap

from trime.extmem.fingerprints import dictionary_checksum, stream_checksum

logger = logging.getLogger(__name__)

FORMAT = "trime-datastore/1"
KEY_TYPE = "last-ffn-input"
KEYS_FILE, VALUES_FILE, META_FILE = "keys.npy", "values.npy", "meta.json"
WRITTEN_FILE, WRITER_FILE = "written.npy", "writer.json"  # in DIR.partial only: what is stored


# how a datastore is made, named by every error that asks for one
HOW_TO_BUILD = ("build one with `fairseq-eval-lm DATA --user-dir \"$(trime-user-dir)\" --task trime_lm "
                "--path CKPT --gen-subset train --tokens-per-sample L --save-dstore DIR` (language "
                "model; L and any --context-window as when scoring) or `trime-mt-datastore DATA --path "
                "CKPT -s S -t T --save-dstore DIR` (translation), then `trime-build-index DIR`")


class DatastoreWriter:
    """Writes a datastore of ``num_tokens`` rows, one batch of scored tokens at a time.

    ``add`` takes each token's stream offset; row ``offset - row_start`` holds it (a shard of a
    split, ``--num-shards``, holds rows ``row_start`` .. ``row_start + num_tokens - 1`` of the
    stream). A row written twice in one run is an error. When the last row arrives the memmaps
    are flushed, ``meta.json`` is written and ``DIR.partial`` is renamed to ``DIR``.

    Interrupted, ``DIR.partial`` keeps what was written: the memmaps and ``written.npy``, which
    marks a row only after its key and value are stored (a killed process leaves its memmap
    writes to the operating system). The same writer started again (``writer.json``: same rows,
    dimension, key type, dictionary and model) continues from there; another is refused.
    """

    def __init__(self, path: str, num_tokens: int, dim: int, meta: dict, progress: bool = True,
                 key_type: str = KEY_TYPE, keys_file: Optional[str] = None, row_start: int = 0):
        self.path = os.path.abspath(path)
        self.partial = self.path + ".partial"
        if os.path.exists(self.path):
            raise FileExistsError(
                f"datastore {path!r} already exists: remove it or choose another folder "
                "(a datastore is never overwritten in place).")
        self.num_tokens, self.dim, self.row_start = int(num_tokens), int(dim), int(row_start)
        self.meta = dict(meta, format=FORMAT, num_tokens=self.num_tokens, dim=self.dim,
                         key_dtype="float16", value_dtype="int32", key_type=key_type)
        if keys_file is not None:  # the keys stay in another (headerless fp16) file: add(keys=None)
            self.meta.update(keys_file=os.path.abspath(keys_file), keys_offset=0)
            _raw_keys(self.meta["keys_file"], self.num_tokens, self.dim, path)
        identity = {"num_tokens": self.num_tokens, "dim": self.dim, "row_start": self.row_start,
                    "key_type": key_type, "keys_file": self.meta.get("keys_file")}
        identity.update({k: self.meta.get(k) for k in ("dictionary_checksum", "model_fingerprint",
                                                       "split", "shard")})
        mode = "w+"
        if os.path.exists(self.partial):
            try:
                with open(os.path.join(self.partial, WRITER_FILE)) as f:
                    resumable = json.load(f) == identity
            except (OSError, ValueError):
                resumable = False
            if not resumable:
                raise FileExistsError(
                    f"{self.partial} is left by an interrupted build of another datastore (other "
                    f"rows, model or dictionary): remove it, or write to another folder")
            mode = "r+"
        else:
            # the memmaps are sparse files that fill as rows arrive: a disk that runs out on the
            # way ends the process in the middle of a write, so check that the whole fits first
            from trime.download import check_free_space

            row_bytes = (0 if keys_file is not None else 2 * self.dim) + 4 + 1
            parent = os.path.dirname(os.path.abspath(self.partial))
            os.makedirs(parent, exist_ok=True)
            check_free_space(parent, self.num_tokens * row_bytes,
                             f"a datastore of {self.num_tokens:,} rows")
            os.makedirs(self.partial)
            with open(os.path.join(self.partial, WRITER_FILE), "w") as f:
                json.dump(identity, f)
        self.keys = None if keys_file is not None else open_memmap(
            os.path.join(self.partial, KEYS_FILE), mode=mode, dtype=np.float16,
            shape=(self.num_tokens, self.dim))
        self.values = open_memmap(os.path.join(self.partial, VALUES_FILE), mode=mode,
                                  dtype=np.int32, shape=(self.num_tokens,))
        self.written = open_memmap(os.path.join(self.partial, WRITTEN_FILE), mode=mode,
                                   dtype=bool, shape=(self.num_tokens,))
        self.written_now = np.zeros(self.num_tokens, dtype=bool)  # in this run
        self.count = int(self.written.sum())
        self.resumed_rows = self.count
        if mode == "r+":
            logger.info(f"TRIME: resuming the datastore {self.partial}: {self.count:,} of "
                        f"{self.num_tokens:,} rows were saved before the interruption")
        self.complete = False
        self.progress = None
        if progress:
            from tqdm import tqdm

            self.progress = tqdm(total=self.num_tokens, initial=self.count, desc="datastore",
                                 unit="tok", unit_scale=True, mininterval=2.0)
        if self.count == self.num_tokens:
            self._finish()

    def saved(self, rows: np.ndarray) -> bool:
        """Whether every one of these stream offsets is already stored (a resumed build skips
        the batches that hold only such rows)."""
        if self.complete:
            return True
        rows = np.asarray(rows, dtype=np.int64) - self.row_start
        return bool(len(rows)) and bool(self.written[rows].all())

    def add(self, rows: torch.Tensor, keys: Optional[torch.Tensor], values: torch.Tensor) -> None:
        """rows [n] stream offsets; keys [n, d] (None when they stay in ``keys_file``); values
        [n] token ids."""
        if self.complete:
            raise RuntimeError(f"datastore {self.path} is complete; nothing more can be added")
        rows = rows.detach().cpu().numpy().astype(np.int64) - self.row_start
        if len(rows) == 0:
            return
        if (keys is None) != (self.keys is None):
            raise ValueError("keys must be given exactly when the datastore writes its own")
        if keys is not None and keys.shape[-1] != self.dim:
            raise ValueError(f"keys of dimension {keys.shape[-1]} for a datastore of dimension {self.dim}")
        if rows.min() < 0 or rows.max() >= self.num_tokens:
            raise ValueError(f"token offsets {rows.min() + self.row_start}..{rows.max() + self.row_start}"
                             f" outside the rows {self.row_start}..{self.row_start + self.num_tokens - 1}"
                             " of this datastore")
        values = values.detach().cpu().numpy().astype(np.int32)
        order = np.argsort(rows, kind="stable")
        rows, values = rows[order], values[order]
        if keys is not None:
            keys = keys.detach().to("cpu", torch.float16).numpy()[order]
        if self.written_now[rows].any() or (np.diff(rows) == 0).any():
            raise RuntimeError("a token was scored twice while saving the datastore; every token "
                               "of the split must be scored exactly once, in one process")
        new = int((~self.written[rows]).sum())
        if rows[-1] - rows[0] + 1 == len(rows):  # a contiguous run (stream order): one copy
            rows = slice(rows[0], rows[-1] + 1)
        if keys is not None:
            self.keys[rows] = keys
        self.values[rows] = values
        self.written[rows] = True  # after the key and value: marks only what is stored
        self.written_now[rows] = True
        self.count += new
        if self.progress is not None:
            self.progress.update(new)
        if self.count == self.num_tokens:
            self._finish()

    def _finish(self) -> None:
        if self.keys is not None:
            self.keys.flush()
        self.values.flush()
        del self.keys, self.values, self.written
        os.remove(os.path.join(self.partial, WRITTEN_FILE))
        os.remove(os.path.join(self.partial, WRITER_FILE))
        self.meta["values_checksum"] = stream_checksum(
            np.load(os.path.join(self.partial, VALUES_FILE), mmap_mode="r"))
        with open(os.path.join(self.partial, META_FILE), "w") as f:
            json.dump(self.meta, f, indent=2)
        os.replace(self.partial, self.path)
        self.complete = True
        if self.progress is not None:
            self.progress.close()
        logger.info(f"TRIME: datastore of {self.num_tokens} keys (d = {self.dim}) saved to {self.path}")


def checked_memmap(path: str, dtype, shape, fix: str, offset: int = 0) -> np.ndarray:
    """A headerless memmap of exactly ``shape`` after ``offset`` bytes; a missing file or one of
    another size is refused with ``fix``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no file {path}: {fix}")
    expected = offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
    actual = os.path.getsize(path)
    if actual != expected:
        raise ValueError(f"{path} holds {actual:,} bytes, not the {expected:,} of "
                         f"{' x '.join(f'{n:,}' for n in shape)} {np.dtype(dtype).name}: {fix}")
    return np.memmap(path, dtype=dtype, mode="r", shape=tuple(shape), offset=offset)


def _raw_keys(keys_file: str, num_tokens: int, dim: int, datastore: str, offset: int = 0):
    """The headerless fp16 [num_tokens, dim] key file another toolkit wrote, memory-mapped."""
    return checked_memmap(
        keys_file, np.float16, (num_tokens, dim),
        f"datastore {datastore} reads its keys from it: if it moved or changed, it is not the key "
        "file the datastore was made from; put it back, or import the datastore again "
        "(trime-import-dstore ... --keys copy makes a folder that needs no other file)", offset)


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
    def open(cls, path: str, dictionary=None, dim: Optional[int] = None,
             shard: bool = False) -> "Datastore":
        """Open and check a datastore; ``dictionary`` / ``dim``: those of the model that will use
        it; ``shard``: open a shard of a split (for merging) instead of refusing it."""
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
        if "shard" in meta and not shard:
            part = meta["shard"]
            raise ValueError(
                f"{path} is shard {part['index']} of {part['count']} of a datastore (rows "
                f"{part['row_start']:,}..{part['row_end'] - 1:,} of {part['total_rows']:,}): merge "
                "the shards first with `trime-merge-dstore OUT SHARD...`")
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


def contiguous_shard(item_offsets, total_rows: int, num_shards: int, shard_id: int) -> dict:
    """Shard ``shard_id`` of ``num_shards`` of a split of items (LM segments, translation pairs)
    whose first rows are ``item_offsets``: items ``item_start`` .. ``item_stop - 1``, and the one
    run of datastore rows ``row_start`` .. ``row_end - 1`` they hold (``meta["shard"]``)."""
    items = len(item_offsets)
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"--shard-id {shard_id} outside 0..{num_shards - 1} (--num-shards "
                         f"{num_shards})")
    if num_shards > items:
        raise ValueError(f"--num-shards {num_shards} is more than the split's {items:,} items")
    start, stop = items * shard_id // num_shards, items * (shard_id + 1) // num_shards
    return {"index": shard_id, "count": num_shards, "item_start": int(start),
            "item_stop": int(stop), "row_start": int(item_offsets[start]),
            "row_end": int(item_offsets[stop]) if stop < items else int(total_rows),
            "total_rows": int(total_rows)}


# what the shards of one split must share to be merged
SHARD_IDENTITY = ("dim", "key_type", "dictionary_size", "dictionary_checksum", "model_fingerprint",
                  "split", "tokens_per_sample", "context_window", "kind", "source_lang",
                  "target_lang", "source_dictionary_checksum")


def merge_shards(out: str, shard_paths, chunk_rows: int = 1 << 18, progress: bool = True) -> str:
    """One datastore at ``out`` from the shards of a split (``fairseq-eval-lm --save-dstore DIR
    --num-shards N --shard-id I``), copied in chunks of rows (never all keys in memory). Refused
    unless the shards come from one model, dictionary and split and their rows cover the split
    exactly once. Returns the merged folder."""
    shards = [Datastore.open(path, shard=True) for path in shard_paths]
    for datastore in shards:
        if "shard" not in datastore.meta:
            raise ValueError(f"{datastore.path} is a whole datastore, not a shard: nothing to merge")
    first = shards[0].meta
    for datastore in shards[1:]:
        differing = [k for k in SHARD_IDENTITY + ("total_rows",) if
                     datastore.meta.get(k, datastore.meta["shard"].get(k)) !=
                     first.get(k, first["shard"].get(k))]
        if differing:
            raise ValueError(f"{datastore.path} is not a shard of the same datastore as "
                             f"{shards[0].path}: they differ in {', '.join(differing)} (another "
                             "model, dictionary, split or scoring). Merge shards of one build only.")
    total = int(first["shard"]["total_rows"])
    shards.sort(key=lambda d: d.meta["shard"]["row_start"])
    expected = 0
    for datastore in shards:
        start, end = datastore.meta["shard"]["row_start"], datastore.meta["shard"]["row_end"]
        if start != expected:
            what = (f"rows {expected:,}..{start - 1:,} are missing" if start > expected else
                    f"rows {start:,}..{min(end, expected) - 1:,} are in two shards")
            raise ValueError(f"the shards do not cover the split once: {what} (shards given: "
                             f"{', '.join(d.path for d in shards)}). Give every shard once; build "
                             "a missing one with the same command and its --shard-id.")
        expected = end
    if expected != total:
        raise ValueError(f"the shards do not cover the split once: rows {expected:,}..{total - 1:,} "
                         "are missing; build the missing shard with its --shard-id")
    meta = {k: v for k, v in first.items() if k not in ("shard", "num_tokens", "values_checksum",
                                                        "format", "key_dtype", "value_dtype")}
    meta["merged_from"] = [os.path.basename(d.path) for d in shards]
    writer = DatastoreWriter(out, total, int(first["dim"]), meta, progress=progress,
                             key_type=first["key_type"])
    for datastore in shards:
        start = datastore.meta["shard"]["row_start"]
        for a in range(0, len(datastore), chunk_rows):
            b = min(len(datastore), a + chunk_rows)
            writer.add(torch.arange(start + a, start + b),
                       torch.from_numpy(np.array(datastore.keys[a:b])),
                       torch.from_numpy(np.array(datastore.values[a:b])))
    return writer.path
