"""``--task trime_lm``: fairseq's language modeling task plus TRIME options.

Reads ``fairseq-preprocess`` output; segments are fixed blocks of
``--tokens-per-sample`` tokens (``--sample-break-mode none``), batched at random
(paper §4.1, Fig. 2a), as groups of consecutive segments of one document
(``--batching consecutive``, §4.2, Fig. 2b; rules in ``trime.batching``) or as the
BM25-packed batches of ``trime-bm25-batches`` (``--batching bm25``, §4.3, Algorithm 1). Every
batch carries its segments' corpus offsets and document ids (``trime.data``) for
the long memory rule. The model is wrapped in ``TrimeLanguageModel`` so that
the criterion sees g(c) and ``fairseq-eval-lm`` can score with memory (Eq. 6).
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq.data import LMContextWindowDataset, iterators
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

from trime.batching import (DOC_BOUNDARIES, check_consecutive_segments, consecutive_batches,
                            shuffled_batches)
from trime.data import EvalStreamDataset, SegmentPositionsDataset
from trime.model import EVAL_MEMORIES, EvalSettings, TrimeLanguageModel

logger = logging.getLogger(__name__)



@dataclass
class TrimeLMConfig(LanguageModelingConfig):
    batching: ChoiceEnum(["random", "consecutive", "bm25"]) = field(
        default="random",
        metadata={"help": "how training segments are grouped into batches: random (paper "
                  "Fig. 2a); consecutive = groups of --consecutive-segments consecutive "
                  "segments of one document (Fig. 2b, for --memory long); bm25 = the batches "
                  "of --bm25-batches FILE, similar segments together (Fig. 2c, Algorithm 1, "
                  "for --memory ext)"},
    )
    bm25_batches: Optional[str] = field(
        default=None,
        metadata={"help": "with --batching bm25: the file written by trime-bm25-batches for this "
                  "data, --tokens-per-sample and --batch-size"},
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
    eval_memory: ChoiceEnum(list(EVAL_MEMORIES)) = field(
        default="none",
        metadata={"help": "memory used when scoring (fairseq-eval-lm): none = the plain LM "
                  "distribution; local = the earlier tokens of the same input (context window "
                  "included); local,long = also a FIFO of the last --long-memory-size scored "
                  "tokens of the document before the input (paper §4.2)"},
    )
    memory_temp: float = field(
        default=1.0,
        metadata={"help": "evaluation temperature τ of Eq. 6; divides the memory logits only"},
    )
    long_memory_size: int = field(
        default=12288,
        metadata={"help": "S, scored tokens kept in the long-memory FIFO with --eval-memory "
                  "local,long (paper: 12,288 for the 247M model, 15,000 for 150M)"},
    )
    long_memory_reset: ChoiceEnum(["document", "never"]) = field(
        default="document",
        metadata={"help": "empty the long-memory FIFO when a new document starts (see "
                  "--doc-boundary), or never (the authors' evaluation of the concatenated stream)"},
    )
    eval_scoring: ChoiceEnum(["trime", "cache", "knnlm"]) = field(
        default="trime",
        metadata={"help": "how memory enters the distribution: trime = Eq. 6 (joint softmax, "
                  "--memory-temp), with ext memory followed by Eq. 8-9 (--knn-lambda, "
                  "--knn-temp); cache = continuous cache (Grave et al. 2017), "
                  "(1-λ) p_LM + λ p_cache, for models trained without TRIME; knnlm = kNN-LM "
                  "(Khandelwal et al. 2020), (1-λ) p_LM + λ p_kNN, with --eval-memory ext"},
    )
    cache_lambda: float = field(
        default=0.1, metadata={"help": "λ of the continuous cache, in [0, 1); tune on valid"})
    cache_theta: float = field(
        default=0.3, metadata={"help": "θ of the continuous cache: p_cache ∝ exp(θ h·h_j); tune on valid"})
    cache_key: ChoiceEnum(["final", "last-ffn-input"]) = field(
        default="final",
        metadata={"help": "representation h of the continuous cache: final = the decoder's output "
                  "features (Grave et al.), last-ffn-input = g(c), TRIME's key"},
    )
    dstore: Optional[str] = field(
        default=None,
        metadata={"help": "external memory for --eval-memory ...,ext: a datastore folder written "
                  "by --save-dstore and indexed with trime-build-index (index.{--knn-sim}.faiss)"},
    )
    knn_k: int = field(default=1024, metadata={"help": "K, datastore entries retrieved per token"})
    knn_nprobe: int = field(
        default=32, metadata={"help": "inverted lists searched by an IVFPQ index (ignored by Flat)"})
    knn_sim: Optional[ChoiceEnum(["ip", "l2"])] = field(
        default=None,
        metadata={"help": "similarity of retrieved entries: ip = g·g'/√d (TRIME's sim, default "
                  "with --eval-scoring trime), l2 = -‖g-g'‖² (kNN-LM, default with knnlm); the "
                  "datastore needs an index built with the same trime-build-index --metric"},
    )
    knn_lambda: Optional[float] = field(
        default=None,
        metadata={"help": "λ in [0, 1): weight of the memory distribution (Eq. 9 for trime, "
                  "default 0.3; kNN-LM's λ, default 0.25); tune with trime-tune"},
    )
    knn_temp: Optional[float] = field(
        default=None,
        metadata={"help": "temperature of the memory distribution: τ' of Eq. 8 (trime) or T of "
                  "kNN-LM; default 1; tune with trime-tune"},
    )
    knn_exact_scores: bool = field(
        default=False,
        metadata={"help": "recompute the similarities of the retrieved entries from the stored "
                  "keys instead of the index's approximate (quantised) ones (the paper's † rows)"},
    )
    knn_interp_memory: ChoiceEnum(["eval", "ext"]) = field(
        default="eval",
        metadata={"help": "memory of P' in Eq. 8: eval = M_eval (local, long and retrieved "
                  "entries, as in the paper), ext = the retrieved entries only"},
    )
    save_dstore: Optional[str] = field(
        default=None,
        metadata={"help": "fairseq-eval-lm: save a datastore of the evaluated split to this new "
                  "folder: the key g(c) (fp16) and next token (int32) of every scored token, "
                  "row i = token i of the split; written to DIR.partial and renamed when complete"},
    )


@register_task("trime_lm", dataclass=TrimeLMConfig)
class TrimeLMTask(LanguageModelingTask):
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
        self.eval_settings = EvalSettings.from_args(args)  # checks the --eval-* options
        self.trime_models = []  # built by build_model; told which split is evaluated
        check_consecutive_segments(
            args.consecutive_segments, args.batch_size if args.batching == "consecutive" else None)
        if (args.batching == "bm25") != bool(args.bm25_batches):
            raise ValueError("--batching bm25 and --bm25-batches FILE go together (the file from "
                             "trime-bm25-batches gives the batches; it is unused otherwise)")

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
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
            logger.warning(
                f"TRIME: no document boundary found in {split} with --doc-boundary "
                f"{self.args.doc_boundary}: the whole split is one document. For text with an "
                "empty line between documents use --doc-boundary empty-line.")
    def build_model(self, args, from_checkpoint=False):
        model = super().build_model(args, from_checkpoint)
        if getattr(args, "checkpoint_activations", False):
            raise ValueError(
                "TRIME does not support --checkpoint-activations: the hooked g(c) would be "
                "recomputed outside the autograd graph. Drop the flag."
            )
        logger.info(f"TRIME: {self.eval_settings.describe()}")
        model = TrimeLanguageModel(model, self.eval_settings)
        if self.eval_settings.uses_ext:
            model.attach_external_memory(self._open_external_memory(model.query_dim))
        self.trime_models.append(model)
        return model

    def _open_external_memory(self, query_dim):
        from trime.datastore import Datastore
        from trime.index import load_index
        from trime.retrieval import Retriever

        settings = self.eval_settings
        datastore = Datastore.open(settings.dstore, self.dictionary, query_dim)
        index = load_index(datastore, settings.knn_sim, settings.knn_nprobe)
        logger.info(f"TRIME: external memory {datastore.path}: {len(datastore)} entries, "
                    f"{type(index).__name__}, nprobe {settings.knn_nprobe}")
        return Retriever(datastore, index, settings.knn_k, settings.knn_sim,
                         settings.knn_exact_scores)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if hasattr(criterion, "set_num_updates"):
            criterion.set_num_updates(update_num)
        if hasattr(criterion, "dummy_batch"):
            criterion.dummy_batch = bool(ignore_grad)  # fairseq's filler batch: no memory rows
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def get_batch_iterator(self, dataset, **kwargs):
        # fairseq's batch_by_size drops the trailing segments that do not fill a
        # multiple of --required-batch-size-multiple (8 by default); for any split
        # but train that silently leaves tokens out of the reported perplexity.
        if dataset is not self.datasets.get("train"):
            kwargs["required_batch_size_multiple"] = 1
        elif self.args.batching in ("consecutive", "bm25"):
            return self._planned_batch_iterator(dataset, **kwargs)
        return super().get_batch_iterator(dataset, **kwargs)

    def eval_lm_dataloader(self, dataset, max_tokens=36000, batch_size=None, max_positions=None,
                           num_shards=1, shard_id=0, num_workers=1, data_buffer_size=10,
                           context_window=0):
        # always in stream order, with the offset and document of every position, so that
        # long memory (trime.scoring) can carry its FIFO from batch to batch
        if num_shards > 1 and ("long" in str(self.args.eval_memory) or self.args.save_dstore):
            raise ValueError("--eval-memory local,long and --save-dstore score the split in stream "
                             "order in one process; drop --num-shards / distributed evaluation.")
        split = next((name for name, d in self.datasets.items() if d is dataset), "?")
        for model in self.trime_models:
            model.begin_split(split, dataset.stream_tokens, meta={
                "tokens_per_sample": self.args.tokens_per_sample, "context_window": context_window,
                "data": self.args.data})
        stream = dataset
        if context_window > 0:
            stream = LMContextWindowDataset(stream, self.args.tokens_per_sample, context_window,
                                            self.source_dictionary.pad())
        stream = EvalStreamDataset(stream, dataset)
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
            bm25_batches = self._load_bm25_batches(dataset, batch_size)

            def make_batches(dataset, epoch):
                # Algorithm 1's batches stay together; their order is shuffled per (seed, epoch)
                return shuffled_batches(bm25_batches, 1, seed, epoch)

        dataset.set_epoch(epoch)
        epoch_iter = iterators.EpochBatchIterator(
            dataset=dataset, collate_fn=dataset.collater, batch_sampler=make_batches,
            seed=seed, num_shards=num_shards, shard_id=shard_id, num_workers=num_workers,
            epoch=epoch, buffer_size=data_buffer_size, skip_remainder_batch=skip_remainder_batch,
            grouped_shuffling=grouped_shuffling,
        )
        self.dataset_to_epoch_iter[dataset] = epoch_iter
        return epoch_iter

    def _load_bm25_batches(self, dataset, batch_size):
        from trime.bm25 import load_bm25_batches

        path = self.args.bm25_batches
        if not path:
            raise ValueError("--batching bm25 needs --bm25-batches FILE, made by `trime-bm25-batches "
                             f"DATA --tokens-per-sample {self.args.tokens_per_sample} "
                             f"--batch-size {batch_size} -o FILE`")
        batches = load_bm25_batches(path, len(dataset), self.args.tokens_per_sample, self.dictionary)
        file_batch_size = max(len(b) for b in batches)
        if file_batch_size != batch_size:
            raise ValueError(f"{path} holds batches of {file_batch_size} segments, but --batch-size "
                             f"is {batch_size}: use --batch-size {file_batch_size} or rerun "
                             f"trime-bm25-batches with --batch-size {batch_size}")
        logger.info(f"TRIME: {len(batches)} BM25 batches of up to {batch_size} segments from {path}")
        return [list(map(int, b)) for b in batches]
