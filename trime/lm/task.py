"""``--task trime_lm``: fairseq's language modeling task plus TRIME options.

Reads ``fairseq-preprocess`` output; segments are fixed blocks of
``--tokens-per-sample`` tokens (``--sample-break-mode none``), batched at random
(paper §4.1, Fig. 2a), as groups of consecutive segments of one document
(``--batching consecutive``, §4.2, Fig. 2b; rules in ``trime.core.batching``) or as the
BM25-packed batches of ``trime-bm25-batches`` (``--batching bm25``, §4.3, Algorithm 1). Every
batch carries its segments' corpus offsets and document ids (``trime.lm.data``) for
the long memory rule. The model is wrapped in ``TrimeLanguageModel`` so that
the criterion sees g(c) and ``fairseq-eval-lm`` can score with memory (Eq. 6-9). The
evaluation options (``--eval-memory``, ``--knn-*``, ...) are declared once in
``trime.settings.EvalOptions``, which this task's config inherits.
"""

import logging
import os
from dataclasses import dataclass, field

from fairseq.data import LMContextWindowDataset, iterators
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

from trime.core.batching import consecutive_batches, shuffled_batches, worker_slices
from trime.core.documents import DOC_BOUNDARIES
from trime.settings import EvalOptions, EvalSettings
from trime.glue.query import last_ffn
from trime.glue.task import BM25BatchesOption, TrimeTask
from trime.lm.data import EvalStreamDataset, SegmentPositionsDataset, StreamShard
from trime.lm.model import TrimeLanguageModel
from trime.progress import logged_progress

logger = logging.getLogger(__name__)


@dataclass
class TrimeLMConfig(EvalOptions, BM25BatchesOption, LanguageModelingConfig):
    """fairseq's language_modeling options, the evaluation options (``EvalOptions``) and
    how training segments are batched and documents delimited."""

    batching: ChoiceEnum(["random", "consecutive", "bm25"]) = field(
        default="random",
        metadata={"help": "how training segments are grouped into batches: random (paper "
                  "Fig. 2a); consecutive = groups of --consecutive-segments consecutive "
                  "segments of one document (Fig. 2b, for --memory long); bm25 = the batches "
                  "of --bm25-batches FILE, similar segments together (Fig. 2c, Algorithm 1, "
                  "for --memory ext)"},
    )
    consecutive_segments: int = field(
        default=1,
        metadata={"help": "m, segments per group with --batching consecutive (paper: 60 for "
                  "WikiText-103 with 150-token segments); must divide --batch-size"},
    )
    doc_boundary: ChoiceEnum(list(DOC_BOUNDARIES)) = field(
        default="title",
        metadata={"help": "how documents are delimited in the data: title = a WikiText article "
                  "title (a ' = Title = ' line between empty lines) starts one; empty-line = an "
                  "empty line ends one; "
                  "none = the whole split is one document. Long memory never crosses a document"},
    )


@register_task("trime_lm", dataclass=TrimeLMConfig)
class TrimeLMTask(TrimeTask, LanguageModelingTask):
    exposes_trime_query = True  # its models return g(c) in extra["trime_query"] (trime_loss needs it)

    @classmethod
    def setup_dictionary(cls, args, **kwargs):
        if args.data:
            data_dir = args.data.split(os.pathsep)[0]
            if not os.path.isfile(os.path.join(data_dir, "dict.txt")):
                raise FileNotFoundError(
                    f"no dict.txt in data directory {data_dir!r}: point DATA at the --destdir of "
                    "`fairseq-preprocess --only-source --trainpref ... --destdir DATA`."
                )
        return super().setup_dictionary(args, **kwargs)

    def __init__(self, args, dictionary, output_dictionary=None, targets=None):
        super().__init__(args, dictionary, output_dictionary, targets)
        self.eval_settings = EvalSettings.from_options(args)  # checks the --eval-* options
        self.trime_models = []  # built by build_model; they score the splits evaluated
        # documents matter: long memory at evaluation, consecutive batches (and --memory long,
        # known when the criterion is built)
        self.uses_documents = args.batching == "consecutive" or "long" in str(args.eval_memory)
        self.one_document_splits = []
        m = args.consecutive_segments
        if m < 1:
            raise ValueError(f"--consecutive-segments must be >= 1, got {m}")
        batch_size = args.batch_size if args.batching == "consecutive" else None
        if batch_size is not None and (batch_size < 1 or batch_size % m != 0):
            raise ValueError(
                f"--consecutive-segments ({m}) must divide --batch-size ({batch_size}): a batch is "
                "a whole number of groups of m consecutive segments. Pick m among the divisors of "
                "the batch size, or change --batch-size.")
        self.check_bm25_options(
            args.batching, args.bm25_batches, "the batches of Algorithm 1: make it with "
            f"`trime-bm25-batches {args.data or 'DATA'} --split train --tokens-per-sample "
            f"{args.tokens_per_sample} --batch-size {args.batch_size or 'B'} -o bm25.json` "
            "(--tokens-per-sample and --batch-size as in this training), then add --bm25-batches "
            "bm25.json")
        if self.eval_settings.save_dstore and os.path.exists(self.eval_settings.save_dstore):
            raise FileExistsError(
                f"--save-dstore {self.eval_settings.save_dstore!r} already exists: remove it or "
                "choose another folder (a datastore is never overwritten in place).")

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        if self.args.tokens_per_sample <= 0:  # fairseq-eval-lm subtracted --context-window from it
            raise ValueError(
                f"--tokens-per-sample must exceed --context-window: fairseq-eval-lm scores "
                f"tokens-per-sample - context-window new tokens per segment (now "
                f"{self.args.tokens_per_sample}), e.g. --tokens-per-sample 3072 --context-window "
                f"2560 for 512 new tokens with 2,560 of context")
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        monolingual = self.datasets[split]
        token_blocks = monolingual.dataset
        self.datasets[split] = SegmentPositionsDataset.from_token_blocks(
            monolingual, token_blocks, token_blocks.dataset, self.dictionary,
            str(self.args.doc_boundary), add_bos_token=self.args.add_bos_token,
        )
        num_documents = self.datasets[split].num_documents
        logger.info(f"TRIME: {split}: {len(monolingual)} segments, {num_documents} documents "
                    f"(--doc-boundary {self.args.doc_boundary})")
        if num_documents == 1 and str(self.args.doc_boundary) != "none":
            self.one_document_splits.append(split)
            self._warn_one_document([split])

    def _warn_one_document(self, splits):
        """Documents matter to long memory (training and evaluation) and consecutive batches
        only: a split found to be one document is worth a warning there, nowhere else."""
        if not self.uses_documents:
            return
        for split in splits:
            logger.warning(
                f"TRIME: no document boundary found in {split} with --doc-boundary "
                f"{self.args.doc_boundary}: the whole split is one document. For text with an "
                "empty line between documents use --doc-boundary empty-line.")

    def build_criterion(self, cfg):
        criterion = super().build_criterion(cfg)
        # cfg: the criterion's config (fairseq-train) or the whole namespace (legacy callers)
        name = getattr(cfg, "_name", None) or getattr(cfg, "criterion", None)
        memory, batching = str(getattr(cfg, "memory", "")), str(self.args.batching)
        if name == "trime_loss" and memory == "long" and not self.uses_documents:
            self.uses_documents = True
            self._warn_one_document(self.one_document_splits)
        if name == "trime_loss" and memory == "long" and batching != "consecutive":
            logger.warning(
                "--memory long with --batching %s: a batch rarely holds two segments of one "
                "document, so long memory sees almost nothing beyond local memory. Use "
                "--batching consecutive --consecutive-segments m (paper §4.2).", batching)
        if name == "trime_loss" and memory == "ext" and batching != "bm25":
            logger.warning(
                "--memory ext with --batching %s: the other segments of a batch are unrelated to "
                "each other; the paper packs similar segments together with BM25 (§4.3): "
                "trime-bm25-batches, then --batching bm25 --bm25-batches FILE.", batching)
        return criterion

    def build_model(self, args, from_checkpoint=False):
        model = super().build_model(args, from_checkpoint)
        if getattr(args, "checkpoint_activations", False):
            raise ValueError(
                "TRIME does not support --checkpoint-activations: the hooked g(c) would be "
                "recomputed outside the autograd graph. Drop the flag."
            )
        logger.info(f"TRIME: {self.eval_settings.describe()}")
        retriever = self.open_external_memory(last_ffn(model.decoder).in_features) \
            if self.eval_settings.uses_ext else None
        model = TrimeLanguageModel(model, self.eval_settings, retriever)
        self.trime_models.append(model)
        return model

    def open_external_memory(self, query_dim, settings: EvalSettings = None):
        """The retriever over ``--dstore`` (checked against this dictionary and g's dimension)."""
        from trime.extmem.datastore import Datastore
        from trime.extmem.retrieval import retriever_for

        settings = settings or self.eval_settings
        datastore = Datastore.open(settings.dstore, self.dictionary, query_dim)
        return retriever_for(datastore, settings)

    def get_batch_iterator(self, dataset, **kwargs):
        """fairseq's (any batch size outside training: ``TrimeTask``), or trime's planned
        training batches with --batching consecutive | bm25."""
        if dataset is self.datasets.get(self.training_split) and \
                self.args.batching in ("consecutive", "bm25"):
            return self._planned_batch_iterator(dataset, **kwargs)
        return super().get_batch_iterator(dataset, **kwargs)

    def eval_lm_dataloader(self, dataset, max_tokens=36000, batch_size=None, max_positions=None,
                           num_shards=1, shard_id=0, num_workers=1, data_buffer_size=10,
                           context_window=0):
        """fairseq-eval-lm's batches (``stream_batches``); iterating them starts the
        evaluation of the split by every model this task built (``start_evaluation``)."""
        if num_shards > 1 and "long" in str(self.args.eval_memory):
            raise ValueError("--eval-memory local,long scores the split in stream order in one "
                             "process (its memory carries over); drop --num-shards / distributed "
                             "evaluation.")
        shard = None
        if num_shards > 1 and self.args.save_dstore:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                raise ValueError("--save-dstore with distributed evaluation would write every "
                                 "worker's rows into one folder: run one process per shard, each "
                                 "with its own --save-dstore DIR.I --num-shards N --shard-id I, "
                                 "then trime-merge-dstore DIR DIR.0 ... DIR.N-1")
            from trime.extmem.datastore import contiguous_shard

            shard = contiguous_shard(dataset.segment_starts, len(dataset.stream_tokens),
                                     num_shards, shard_id)
            num_shards, shard_id = 1, 0  # the shard's segments, batched as a whole split
        batches = self.stream_batches(dataset, max_tokens, batch_size, max_positions, num_shards,
                                      shard_id, num_workers, data_buffer_size, context_window,
                                      shard)
        meta = self.datastore_meta(context_window)
        if shard is not None:
            meta["shard"] = shard
        return _StartingEvaluation(batches, lambda: self.start_evaluation(dataset, meta=meta),
                                   lambda: self.with_progress(batches, dataset))

    def with_progress(self, batches, dataset):
        """Iterate the evaluation ``batches`` of ``dataset``, logging progress every 30 s
        (batches, tokens/s, time left): fairseq-eval-lm logs none when its output is not a
        terminal."""
        return logged_progress(self._unsaved(iter(batches)), len(batches),
                               f"scoring {self.split_name(dataset)}", logger, size=_sample_tokens)

    def _unsaved(self, batches):
        """The batches, less those whose every scored token a resumed --save-dstore already
        stored (without long memory, whose FIFO needs every batch)."""
        writers = [m.evaluation.writer for m in self.trime_models
                   if getattr(m, "evaluation", None) is not None and m.evaluation.writer is not None]
        if not writers or writers[0].resumed_rows == 0 or "long" in str(self.args.eval_memory):
            yield from batches
            return
        skipped = 0
        for sample in batches:
            if sample and "trime_label_offset" in sample:
                scored = sample["target"].ne(self.dictionary.pad())
                if writers[0].saved(sample["trime_label_offset"][scored].numpy()):
                    skipped += 1
                    continue
            yield sample
        logger.warning(f"TRIME: {skipped} batches were already in the resumed datastore and were "
                       "not scored again: the loss printed covers the other batches only")

    def split_name(self, dataset) -> str:
        return next((name for name, d in self.datasets.items() if d is dataset), "?")

    def datastore_meta(self, context_window: int) -> dict:
        """What a datastore saved by this task records about how its split was scored."""
        return {"tokens_per_sample": self.args.tokens_per_sample,
                "context_window": context_window, "data": self.args.data}

    def start_evaluation(self, dataset, context_window=0, models=None, settings=None,
                         retriever=None, meta=None):
        """``models`` (default: every model this task built) begin scoring ``dataset`` under
        ``settings`` and ``retriever`` (default: the task's); ``meta``: a saved datastore's
        (default: ``datastore_meta(context_window)``)."""
        for model in self.trime_models if models is None else models:
            model.start_evaluation(self.split_name(dataset), dataset.stream_tokens,
                                   meta or self.datastore_meta(context_window), settings, retriever)

    def stream_batches(self, dataset, max_tokens=36000, batch_size=None, max_positions=None,
                       num_shards=1, shard_id=0, num_workers=1, data_buffer_size=10,
                       context_window=0, shard=None):
        """Evaluation batches always in stream order, with the offset and document of every
        position, so that long memory (``trime.core.fifo``) carries its FIFO from batch to
        batch; ``shard`` (``contiguous_shard`` of the segments): only its segments; starts nothing."""
        stream = dataset
        if context_window > 0:
            stream = LMContextWindowDataset(stream, self.args.tokens_per_sample, context_window,
                                            self.source_dictionary.pad())
        stream = EvalStreamDataset(stream, dataset)
        if shard is not None:
            stream = StreamShard(stream, shard["item_start"], shard["item_stop"])
        return self.get_batch_iterator(
            dataset=stream, max_tokens=max_tokens, max_sentences=batch_size,
            max_positions=max_positions, ignore_invalid_inputs=True, num_shards=num_shards,
            shard_id=shard_id, num_workers=num_workers, data_buffer_size=data_buffer_size,
        ).next_epoch_itr(shuffle=False)

    def _planned_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, seed=1,
                                num_shards=1, shard_id=0, num_workers=0, epoch=1,
                                data_buffer_size=0, disable_iterator_cache=False,
                                skip_remainder_batch=False, grouped_shuffling=False, **unused):
        """Training batches planned by trime (--batching consecutive | bm25) instead of fairseq."""
        if dataset in self.dataset_to_epoch_iter and not disable_iterator_cache:
            return self.dataset_to_epoch_iter[dataset]
        batching = self.args.batching
        batch_size = max_sentences
        if batch_size is None:
            if max_tokens is None:
                raise ValueError(f"--batching {batching} needs --batch-size (segments per batch)")
            batch_size = max(1, max_tokens // self.args.tokens_per_sample)
        if batching == "consecutive":
            m = self.args.consecutive_segments
            segment_docs = dataset.segment_documents()

            def make_batches(dataset, epoch):
                # called by fairseq once per epoch; deterministic in (seed, epoch), so a
                # resumed run rebuilds the same list and skips the batches already done
                return consecutive_batches(segment_docs, m, batch_size, seed, epoch,
                                           num_shards=num_shards, grouped=grouped_shuffling)
        else:
            # one batch of the file is the in-batch memory of one step: with N workers it is
            # every worker's --batch-size segments together (the authors' fork deals N
            # consecutive chain batches to the N GPUs of a step and shuffles them as a group)
            bm25_batches = self._load_bm25_batches(dataset, batch_size, num_shards)

            def make_batches(dataset, epoch):
                # Algorithm 1's batches stay together; their order is shuffled per (seed, epoch);
                # fairseq then deals batch j to worker j % N: a file batch's N slices go to the
                # N workers of one step
                return [part for group in shuffled_batches(bm25_batches, 1, seed, epoch)
                        for part in worker_slices(group, batch_size, num_shards)]

        if batching == "bm25":  # fairseq reshuffles the batches: in groups of N, one step each
            grouped_shuffling = True
        dataset.set_epoch(epoch)
        epoch_iter = iterators.EpochBatchIterator(
            dataset=dataset, collate_fn=dataset.collater, batch_sampler=make_batches,
            seed=seed, num_shards=num_shards, shard_id=shard_id, num_workers=num_workers,
            epoch=epoch, buffer_size=data_buffer_size, skip_remainder_batch=skip_remainder_batch,
            grouped_shuffling=grouped_shuffling,
        )
        self.dataset_to_epoch_iter[dataset] = epoch_iter
        return epoch_iter

    def _load_bm25_batches(self, dataset, batch_size, num_shards=1):
        from trime.lm.bm25_batches import load_bm25_batches

        path = self.args.bm25_batches
        step_size = batch_size * num_shards  # the segments of one step over all workers
        if not path:
            raise ValueError("--batching bm25 needs --bm25-batches FILE, made by `trime-bm25-batches "
                             f"DATA --tokens-per-sample {self.args.tokens_per_sample} "
                             f"--batch-size {step_size} -o FILE`")
        batches = load_bm25_batches(path, len(dataset), self.args.tokens_per_sample, self.dictionary)
        file_batch_size = max(len(b) for b in batches)
        if file_batch_size != step_size:
            workers = f" on {num_shards} workers" if num_shards > 1 else ""
            raise ValueError(f"{path} holds batches of {file_batch_size} segments, but --batch-size "
                             f"{batch_size}{workers} makes steps of {step_size}: rerun "
                             f"trime-bm25-batches with --batch-size {step_size}"
                             + ("" if file_batch_size % num_shards else
                                f" or use --batch-size {file_batch_size // num_shards}"))
        logger.info(f"TRIME: {len(batches)} BM25 batches of up to {step_size} segments from {path}"
                    + (f", each split over {num_shards} workers" if num_shards > 1 else ""))
        return [list(map(int, b)) for b in batches]


class _StartingEvaluation:
    """fairseq's evaluation iterator; starting to iterate it starts the evaluation (what
    fairseq-eval-lm does first when it scores, so no evaluation state exists before), then
    iterates with progress (``TrimeLMTask.with_progress``)."""

    def __init__(self, batches, start, iterate):
        self.batches, self.start, self.iterate = batches, start, iterate
        self.n = getattr(batches, "n", 0)  # fairseq's progress bars read these two

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        self.start()
        return self.iterate()


def _sample_tokens(sample) -> int:
    """Tokens of an evaluation batch, as fairseq counts them (0 for an empty batch)."""
    return int(sample["ntokens"]) if sample else 0
