"""The BM25 order of translation training pairs (paper §5.4 with §4.3's Algorithm 1).

For MT the in-batch memory is the other target sentences of a batch (``trime_mt_loss``), so
the batches should hold similar target sentences. ``trime-bm25-batches --source-lang S
--target-lang T`` follows Algorithm 1's chain over the *target* sentences and writes the
chain as an order of all training pairs; ``fairseq-train --task trime_translation --batching
bm25 --bm25-batches FILE`` hands fairseq that order in place of its length-sorted one, so
fairseq's own ``--max-tokens`` batching cuts the chain into batches (as the authors did).

- ``target_sentences``: the target side of the training pairs, exactly as ``--task
  translation`` loads them (pair i = training example i), and each pair's size in tokens;
- ``cut_like_fairseq``: an order cut into batches as fairseq's --max-tokens batching cuts it;
- ``save_bm25_order`` / ``load_bm25_order``: the JSON file, checked against the training data.
"""

from typing import List

import numpy as np

from trime.extmem.fingerprints import dictionary_checksum
from trime.lm.bm25_batches import check_permutation, read_bm25_file, write_bm25_file

FORMAT = "trime-bm25-order/1"


def target_sentences(data_dir: str, split: str, source_lang: str, target_lang: str, source_dictionary,
                     target_dictionary):
    """(token ids of the target sentence of every pair of ``split``, EOS included; each pair's
    size max(source, target) in tokens), loaded with fairseq's ``load_langpair_dataset`` as
    ``--task translation`` loads them."""
    from fairseq.tasks.translation import load_langpair_dataset

    try:
        pairs = load_langpair_dataset(
            data_dir, split, source_lang, source_dictionary, target_lang, target_dictionary,
            combine=True, dataset_impl=None, upsample_primary=1, left_pad_source=True,
            left_pad_target=False, max_source_positions=1024, max_target_positions=1024)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{e}: binarise the parallel data with `fairseq-preprocess --source-lang "
            f"{source_lang} --target-lang {target_lang} --trainpref TEXT --destdir {data_dir}`"
        ) from None
    sizes = np.maximum(pairs.src_sizes, pairs.tgt_sizes).astype(np.int64)
    return [pairs.tgt[i].numpy() for i in range(len(pairs))], sizes


def cut_like_fairseq(order, sizes: np.ndarray, max_tokens: int) -> List[List[int]]:
    """``order`` cut into batches by fairseq's own ``batch_by_size`` (padded size <= max_tokens),
    as training with --max-tokens cuts it (before --required-batch-size-multiple)."""
    from fairseq.data import data_utils

    order = np.asarray(order, dtype=np.int64)
    batches = data_utils.batch_by_size(order, None, num_tokens_vec=sizes[order], max_tokens=max_tokens)
    return [[int(i) for i in batch] for batch in batches]


def save_bm25_order(path: str, order: List[int], **fields) -> None:
    """Write {"format": FORMAT, **fields, "order": order} as JSON, atomically."""
    write_bm25_file(path, FORMAT, "order", [int(i) for i in order], **fields)


def load_bm25_order(path: str, num_pairs: int, source_lang: str, target_lang: str,
                    target_dictionary) -> np.ndarray:
    """The order of a ``trime-bm25-batches --source-lang ... --target-lang ...`` file, checked:
    made for this direction, this many training pairs and this target dictionary, and a
    permutation of range(num_pairs). Raises ValueError naming the mismatch and the fix."""
    rerun = (f"rerun `trime-bm25-batches DATA --source-lang {source_lang} --target-lang "
             f"{target_lang} -o {path}` on this training data")
    content = read_bm25_file(path, FORMAT, ("num_pairs", "source_lang", "target_lang",
                                            "dictionary_checksum", "order"), rerun)
    direction = (content["source_lang"], content["target_lang"])
    if direction != (source_lang, target_lang):
        raise ValueError(f"{path!r} was made for {direction[0]}->{direction[1]}, this training is "
                         f"{source_lang}->{target_lang} (BM25 runs on the target side): {rerun}")
    if content["num_pairs"] != num_pairs:
        raise ValueError(f"{path!r} was made for {content['num_pairs']:,} training pairs, this "
                         f"training set has {num_pairs:,}: {rerun}")
    checksum = dictionary_checksum(target_dictionary)
    if content["dictionary_checksum"] != checksum:
        raise ValueError(f"{path!r} was made with another target dictionary (checksum "
                         f"{content['dictionary_checksum']}, this data's: {checksum}): {rerun}")
    order = content["order"]
    if not (isinstance(order, list) and all(type(i) is int for i in order)):
        raise ValueError(f"the order of {path!r} is not a list of pair ids: {rerun}")
    ids = np.array(order, dtype=np.int64)
    check_permutation(ids, num_pairs, f"the order of {path!r}", "pair", rerun)
    return ids
