"""A datastore from parallel data (kNN-MT, TrimeMT_ext's external memory; paper §5.4).

A teacher-forced pass of a translation model over a split saves, for every target token, the
decoder's key (``--mt-key``: ``final`` = the output features, what the authors' and most kNN-MT
code use; ``last-ffn-input`` = the LM's g) and the token itself, through the project's
datastore writer (``trime.extmem.datastore``: fp16 keys, int32 values, ``meta.json``). Row
``offset[i] + t`` holds token t of pair i's target (EOS included), so every target token is
written exactly once, whatever the batching; a pass that leaves any out (pairs skipped as too
long) leaves the datastore incomplete and says so. ``meta.json`` records the direction and both
dictionaries' checksums, which decoding checks.
"""

import logging
import sys

import numpy as np
import torch

from trime.extmem.datastore import DatastoreWriter, contiguous_shard
from trime.extmem.fingerprints import dictionary_checksum, model_fingerprint
from trime.glue.query import features_and_key

logger = logging.getLogger(__name__)

KIND = "translation"  # meta["kind"] of a datastore built from parallel data


def target_rows(sample, pair_offsets: np.ndarray, pad: int):
    """(rows, scored) of a batch: each non-pad target token's datastore row, offset of its
    pair + its position in the target (either padding side)."""
    target = sample["target"]
    scored = target.ne(pad)
    positions = scored.long().cumsum(1) - 1
    starts = torch.from_numpy(pair_offsets[sample["id"].cpu().numpy()]).to(target.device)
    return (starts[:, None] + positions)[scored], scored


def pair_shard(target_sizes, num_shards: int, shard_id: int) -> dict:
    """Shard ``shard_id`` of ``num_shards``: contiguous pairs and the datastore rows they hold."""
    offsets = np.concatenate([[0], np.cumsum(np.asarray(target_sizes, dtype=np.int64))])
    return contiguous_shard(offsets[:-1], offsets[-1], num_shards, shard_id)


def key_dim(model, mt_key: str) -> int:
    """The dimension of the model's ``--mt-key`` keys."""
    from trime.glue.query import last_ffn

    return (last_ffn(model.decoder).in_features if mt_key == "last-ffn-input"
            else model.decoder.output_projection.in_features)


def save_translation_datastore(path, model, batches, target_sizes, mt_key, source_dictionary,
                               target_dictionary, meta: dict, shard: dict = None) -> str:
    """Write the datastore of one teacher-forced pass over ``batches`` (fairseq samples of a
    split whose pairs have ``target_sizes`` target tokens, EOS included, every pair once; with
    ``shard`` (``pair_shard``), the pairs of the shard). An interrupted pass started again
    continues its ``path.partial``: batches already stored are skipped. Returns the datastore
    folder; raises if the batches left any target token out."""
    target_sizes = np.asarray(target_sizes, dtype=np.int64)
    pair_offsets = np.concatenate([[0], np.cumsum(target_sizes)[:-1]])
    rows = (shard["row_start"], shard["row_end"]) if shard else (0, int(target_sizes.sum()))
    pad = target_dictionary.pad()
    writer = DatastoreWriter(path, rows[1] - rows[0], key_dim(model, mt_key), dict(
        meta, kind=KIND, dictionary_size=len(target_dictionary),
        dictionary_checksum=dictionary_checksum(target_dictionary),
        source_dictionary_size=len(source_dictionary),
        source_dictionary_checksum=dictionary_checksum(source_dictionary),
        model_fingerprint=model_fingerprint(model), command=" ".join(sys.argv),
        **({"shard": shard} if shard else {})), key_type=mt_key, row_start=rows[0])
    model.eval()
    skipped = 0
    with torch.no_grad():
        for sample in batches:
            if writer.complete:
                break
            batch_rows, scored = target_rows(sample, pair_offsets, pad)
            if writer.resumed_rows and writer.saved(batch_rows.cpu().numpy()):
                skipped += 1
                continue
            _, _, keys = features_and_key(
                model.decoder, lambda: model(**sample["net_input"], features_only=True), mt_key)
            writer.add(batch_rows, keys[scored], sample["target"][scored])
    if skipped:
        logger.info(f"TRIME: {skipped} batches were already in the resumed datastore")
    if not writer.complete:
        raise ValueError(
            f"the datastore {path} is incomplete: {writer.count:,} of {writer.num_tokens:,} target "
            "tokens were written, so some pairs were skipped (too long for the model, or "
            "--skip-invalid-size-inputs-valid-test). A datastore needs every pair: drop that "
            "flag, or raise --max-source-positions / --max-target-positions. "
            f"{path}.partial is left and is refused by every reader.")
    return writer.path
