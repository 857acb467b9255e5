"""One owner for the state of evaluating one split with one model.

``SplitEvaluation`` holds everything that lives exactly as long as the scoring of a
split: the ``MemoryScorer`` (with its long-memory FIFO), the retriever and whether the
datastore holds this very split (a token must not retrieve its own entry), the
datastore writer of ``--save-dstore``, and the model fingerprint that ties both
datastores to the weights. It is created explicitly by
``TrimeLanguageModel.start_evaluation`` — for ``fairseq-eval-lm`` when the task's
evaluation batches start to be iterated, i.e. when scoring begins — and replaced by
the next one.
"""

import logging
import sys

from trime.extmem.datastore import DatastoreWriter
from trime.extmem.fingerprints import dictionary_checksum, model_fingerprint, stream_checksum
from trime.settings import EvalSettings
from trime.glue.scorer import MemoryScorer

logger = logging.getLogger(__name__)


class SplitEvaluation:
    """The scoring of ``split`` (its tokens as one stream) by ``model`` under ``settings``.

    Args:
        model: the ``TrimeLanguageModel`` scoring the split.
        settings: the checked evaluation options.
        split: the split's name (recorded in a saved datastore).
        stream_tokens: the split's tokens in stream order (row i of a datastore = token i);
            needed with external memory or --save-dstore.
        meta: extra fields for a saved datastore's meta.json.
        retriever: the external memory to search (``...,ext``), if any.
    """

    def __init__(self, model, settings: EvalSettings, split: str, stream_tokens=None,
                 meta: dict = None, retriever=None):
        self.settings, self.split = settings, split
        needs_stream = retriever is not None or settings.save_dstore
        if needs_stream and stream_tokens is None:
            raise ValueError("external memory and --save-dstore need the split's token stream")
        fingerprint = model_fingerprint(model.decoder) if needs_stream else None
        exclude_own_tokens = False
        if retriever is not None:
            datastore = retriever.datastore
            exclude_own_tokens = datastore.meta.get("values_checksum") == stream_checksum(stream_tokens)
            if "imported" in datastore.meta:
                logger.info(f"TRIME: the datastore {datastore.path} was imported from "
                            f"{datastore.meta['imported']['format']}: trime cannot check that its "
                            "keys come from this checkpoint")
            elif datastore.meta.get("model_fingerprint") != fingerprint:
                logger.warning(f"TRIME: the datastore {datastore.path} was built with other model "
                               "weights than this checkpoint: its keys live in another space "
                               "unless that is intended (rebuild it with --save-dstore)")
            if exclude_own_tokens:
                logger.info(f"TRIME: the datastore was built from this split ({split}): each "
                            "token's own entry is excluded from its retrieved neighbours")
        self.scorer = MemoryScorer(settings, model.decoder, model.pad, retriever, exclude_own_tokens)
        self.writer = None
        if settings.save_dstore:
            dictionary = model.decoder.dictionary
            shard = (meta or {}).get("shard")  # --num-shards: a contiguous run of the split's rows
            rows = (shard["row_start"], shard["row_end"]) if shard else (0, len(stream_tokens))
            self.writer = DatastoreWriter(settings.save_dstore, rows[1] - rows[0], model.query.dim,
                                          dict(meta or {}, split=split,
                                               dictionary_size=len(dictionary),
                                               dictionary_checksum=dictionary_checksum(dictionary),
                                               model_fingerprint=fingerprint,
                                               command=" ".join(sys.argv)), row_start=rows[0])

    def save_to_datastore(self, queries, sample):
        """--save-dstore: write g(c) and the target of every scored position of the batch."""
        if self.writer is None or self.writer.complete:
            return
        if sample is None or "trime_label_offset" not in sample:
            raise ValueError("--save-dstore needs the stream offsets that --task trime_lm adds to "
                             "evaluation batches (fairseq-eval-lm --task trime_lm)")
        target = sample["target"]
        scored = target.ne(self.scorer.pad)
        self.writer.add(sample["trime_label_offset"].to(target.device)[scored], queries[scored],
                        target[scored])
