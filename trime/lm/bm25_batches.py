"""The training segments of ``--task trime_lm`` and the BM25 batch file (paper §4.3, Algorithm 1).

- ``segment_token_ids``: the training segments, exactly the blocks that fairseq's
  language_modeling task makes with ``--sample-break-mode none --tokens-per-sample L``
  (segment i = training example id i), the input of ``trime.core.bm25``;
- ``save_bm25_batches`` / ``load_bm25_batches``: the JSON file that
  ``trime-bm25-batches`` writes and ``fairseq-train --task trime_lm --batching bm25
  --bm25-batches FILE`` reads, checked against the training data (the writer, reader and
  permutation check are shared with translation's order file, ``trime.mt.bm25_order``).
"""

import json
import os
from typing import List

import numpy as np

from trime.extmem.fingerprints import dictionary_checksum
from trime.files import open_whole

FORMAT = "trime-bm25-batches/1"


def segment_token_ids(data_dir: str, split: str, tokens_per_sample: int, dictionary,
                      combine: bool = True) -> List[np.ndarray]:
    """Token ids of each training segment (segment i = block i of fairseq's dataset).

    Built as fairseq's language_modeling task builds ``--sample-break-mode none``
    blocks: ``data_utils.load_indexed_dataset`` (``combine``: also train1, train2, …
    as fairseq-train does for its training split) and a ``TokenBlockDataset`` over
    the concatenated lines, blocks of ``tokens_per_sample`` tokens, the last one
    shorter. (``--shorten-data-split-list`` is not supported.)
    """
    from fairseq.data import TokenBlockDataset, data_utils

    split_path = os.path.join(data_dir, split)
    dataset = data_utils.load_indexed_dataset(split_path, dictionary, combine=combine)
    if dataset is None:
        raise FileNotFoundError(
            f"no binarised split {split!r} in {data_dir!r} (expected {split}.bin/.idx): run "
            f"`fairseq-preprocess --only-source --trainpref TEXT --destdir {data_dir}` first.")
    blocks = TokenBlockDataset(dataset, dataset.sizes, tokens_per_sample, pad=dictionary.pad(),
                               eos=dictionary.eos(), break_mode="none", include_targets=False)
    return [blocks[i].numpy() for i in range(len(blocks))]


def special_token_ids(dictionary) -> List[int]:
    """<s>, <pad>, </s>, <unk>: not BM25 terms (``trime.core.bm25``)."""
    return sorted({dictionary.bos(), dictionary.pad(), dictionary.eos(), dictionary.unk()})


def write_bm25_file(path: str, file_format: str, key: str, rows: list, **fields) -> None:
    """Write {"format": file_format, **fields, key: rows} as JSON: a list of lists one per line,
    a flat list on one line. Atomic: written to path + ".tmp", then renamed over path."""
    header = json.dumps({"format": file_format, **fields}, indent=1)
    assert header.endswith("\n}")
    if rows and isinstance(rows[0], list):
        body = "[\n" + ",\n".join("  " + json.dumps(row, separators=(",", ":")) for row in rows) + "\n ]"
    else:
        body = json.dumps(rows, separators=(",", ":"))
    text = header[:-2] + f',\n "{key}": ' + body + "\n}\n"
    with open_whole(path, encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def save_bm25_batches(path: str, batches: List[List[int]], **fields) -> None:
    """Write {"format": FORMAT, **fields, "batches": batches} as JSON, one batch a line, atomically."""
    write_bm25_file(path, FORMAT, "batches", batches, **fields)


def read_bm25_file(path: str, file_format: str, required, rerun: str) -> dict:
    """The JSON content of a BM25 file of ``file_format`` with the ``required`` keys; a
    ValueError ending in ``rerun`` (the command that remakes it) otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"BM25 batch file {path!r} does not exist: {rerun}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read BM25 batch file {path!r} ({e}): {rerun}") from None
    if not isinstance(content, dict) or content.get("format") != file_format:
        found = content.get("format") if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"{path!r} is not a trime-bm25-batches file of this kind (format "
                         f"{found!r}, expected {file_format!r}): {rerun}")
    missing = [key for key in required if key not in content]
    if missing:
        raise ValueError(f"{path!r} lacks {', '.join(missing)}: {rerun}")
    return content


def check_permutation(ids: np.ndarray, num: int, what: str, unit: str, rerun: str) -> None:
    """A ValueError unless ``ids`` holds every id in range(num) exactly once."""
    inside = ids[(ids >= 0) & (ids < num)]
    counts = np.bincount(inside, minlength=num)
    if len(ids) != num or len(inside) != len(ids) or (counts != 1).any():
        raise ValueError(
            f"{what} are not a permutation of the {num:,} {unit} ids ({len(ids):,} entries, "
            f"{int((counts == 0).sum()):,} ids missing, {int((counts > 1).sum()):,} repeated, "
            f"{len(ids) - len(inside):,} out of range): {rerun}")


def load_bm25_batches(path: str, num_segments: int, tokens_per_sample: int,
                      dictionary) -> List[List[int]]:
    """The batches of a ``trime-bm25-batches`` file, checked against the training data.

    Args:
        path: the file (``--bm25-batches``).
        num_segments: training segments of the task (len of its train dataset).
        tokens_per_sample: the training --tokens-per-sample.
        dictionary: the task's fairseq Dictionary (compared by ``dictionary_checksum``).
    Returns:
        the batches, lists of segment ids; together every segment id exactly once.
    Raises:
        ValueError naming the mismatch and the fix: file missing, unreadable or not
        this format; made for another L, segment count or dictionary; batches not a
        permutation of range(num_segments).
    """
    rerun = (f"rerun `trime-bm25-batches DATA --split train --tokens-per-sample "
             f"{tokens_per_sample} --batch-size B -o {path}` on this training data")
    content = read_bm25_file(path, FORMAT, ("num_segments", "tokens_per_sample",
                                            "dictionary_checksum", "batches"), rerun)
    file_segments, file_tokens = content["num_segments"], content["tokens_per_sample"]
    if file_tokens != tokens_per_sample or file_segments != num_segments:
        raise ValueError(
            f"{path!r} was made for {file_segments:,} segments of {file_tokens} tokens, this "
            f"training set has {num_segments:,} segments of {tokens_per_sample} tokens: "
            f"{rerun} (--tokens-per-sample must equal the training one)")
    checksum = dictionary_checksum(dictionary)
    if content["dictionary_checksum"] != checksum:
        raise ValueError(
            f"{path!r} was made with another dictionary (checksum "
            f"{content['dictionary_checksum']}, this data's dict.txt: {checksum}): {rerun}")
    batches = content["batches"]
    if not isinstance(batches, list) or not all(
            isinstance(batch, list) and batch and all(type(s) is int for s in batch)
            for batch in batches):
        raise ValueError(f"the batches of {path!r} are not non-empty lists of segment ids: {rerun}")
    ids = np.array([s for batch in batches for s in batch], dtype=np.int64)
    check_permutation(ids, num_segments, f"the batches of {path!r}", "segment", rerun)
    return batches
