"""``--task trime_translation``: fairseq's translation task, for training with TRIME.

Everything ``--task translation`` does keeps working (it is the parent class, options and
all). What it adds:

- ``--batching bm25 --bm25-batches FILE``: the training pairs in the order of Algorithm 1's
  chain over their target sentences (``trime-bm25-batches --source-lang S --target-lang T``,
  ``trime.mt.bm25_order``) instead of fairseq's length-sorted order; fairseq's own
  ``--max-tokens`` batching then cuts the chain into batches, so similar target sentences
  share a batch, i.e. each other's memory (§5.4 with §4.3). The batches are shuffled per
  epoch as usual;
- decoding with a datastore in ``fairseq-generate`` (``--eval-memory ext --dstore DIR``:
  kNN-MT with ``--eval-scoring knnlm``, TrimeMT_ext with ``--eval-scoring trime``;
  ``trime.mt.generation``), with the LM's option declarations (``EvalOptions``);
- what both trime tasks add (``trime.glue.task.TrimeTask``): the criterion is told the update
  number (``trime_mt_loss``'s CE warm-up), and ``fairseq-generate --batch-size 5`` translates
  every pair (fairseq 0.12 drops a last batch that is not a multiple of 8).
"""

import logging
from dataclasses import dataclass, field, make_dataclass

import numpy as np
from fairseq.data import BaseWrapperDataset
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from trime.settings import EvalOptions, EvalSettings, choice_enum, declared_fields
from trime.glue.task import BM25BatchesOption, TrimeTask

# the LM's evaluation options that decoding with a datastore uses, declared there once
MT_MEMORY_OPTIONS = ("eval_memory", "eval_scoring", "memory_temp", "dstore", "knn_k", "knn_sim",
                     "knn_lambda", "knn_temp", "knn_nprobe", "knn_exact_scores", "knn_device")
# K: an LM datastore is searched once per token (1024, the kNN-LM's); beam search searches once per
# beam per step, and kNN-MT uses a few neighbours (Appendix D's grid 1..64; knn-box's default 16)
MT_DEFAULTS = {"knn_k": 16}
# translation decodes with the datastore only (§5.4): no local or long memory, no cache
MT_NARROWED = {
    "eval_memory": (choice_enum(["none", "ext"]),
                    "memory used when decoding: none = the model's own distribution (fairseq's "
                    "decoding); ext = at every step also the --knn-k nearest entries of the "
                    "datastore --dstore (paper §5.4: no local or long memory in translation)"),
    "eval_scoring": (choice_enum(["trime", "knnlm"]),
                     "how the retrieved entries enter each step's distribution: trime = "
                     "TrimeMT_ext, one softmax over vocabulary and entries (Eq. 6, --memory-temp), "
                     "then Eq. 8-9 (--knn-lambda, --knn-temp); knnlm = kNN-MT (Khandelwal et al. "
                     "2021), (1-λ) p_MT + λ p_kNN"),
}
MTMemoryOptions = make_dataclass(
    "MTMemoryOptions", declared_fields(EvalOptions, MT_MEMORY_OPTIONS, MT_DEFAULTS, MT_NARROWED),
    bases=(FairseqDataclass,))

logger = logging.getLogger(__name__)


@dataclass
class TrimeTranslationConfig(MTMemoryOptions, BM25BatchesOption, TranslationConfig):
    """fairseq's translation options, how training pairs are batched, and the memory options
    (``--memory-temp``: τ of Eq. 5 in training and of Eq. 6 in decoding)."""

    batching: ChoiceEnum(["random", "bm25"]) = field(
        default="random",
        metadata={"help": "how training pairs are grouped into batches: random = fairseq's "
                  "(pairs of similar length, batches shuffled); bm25 = the order of --bm25-batches "
                  "FILE, similar target sentences next to each other, cut into batches by "
                  "--max-tokens (paper §5.4, Algorithm 1)"},
    )


class BM25OrderedPairs(BaseWrapperDataset):
    """The training pairs, offered to fairseq's batching in the BM25 chain's order (fairseq
    filters over-long pairs and packs consecutive ones into --max-tokens batches, keeping the
    order)."""

    def __init__(self, pairs, order: np.ndarray):
        super().__init__(pairs)
        self.order = order

    def ordered_indices(self):
        return self.order


def refuse_empty_sentences(split: str, pairs) -> None:
    """An empty line binarises to its end-of-sentence token alone. fairseq trains on and decodes
    such pairs without a word; here they are refused, naming the line, before any work is done."""
    sides = (("source", pairs.src_sizes), ("target", pairs.tgt_sizes))
    for side, sizes in sides:
        if sizes is None:
            continue
        empty = np.flatnonzero(np.asarray(sizes) <= 1)
        if len(empty):
            raise ValueError(
                f"{split}: pair {empty[0]} (line {empty[0] + 1}) has an empty {side} sentence "
                f"({len(empty):,} pairs have one): remove those pairs from both sides of the raw "
                "text and binarise again (`trime-prepare-translation` refuses them)")


@register_task("trime_translation", dataclass=TrimeTranslationConfig)
class TrimeTranslationTask(TrimeTask, TranslationTask):
    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self.check_bm25_options(
            cfg.batching, cfg.bm25_batches, "the order of Algorithm 1: make it with "
            f"`trime-bm25-batches {cfg.data or 'DATA'} --source-lang {cfg.source_lang or 'S'} "
            f"--target-lang {cfg.target_lang or 'T'} -o bm25_order.json`, then add "
            "--bm25-batches bm25_order.json")
        self.memory = EvalSettings(**{name: getattr(cfg, name) for name in MT_MEMORY_OPTIONS})
        if self.memory.eval_memory not in ("none", "ext"):
            raise ValueError(f"--eval-memory {self.memory.eval_memory}: translation decodes with "
                             "the datastore only (--eval-memory ext; no local or long memory, "
                             "paper §5.4)")
        if self.memory.eval_scoring == "cache":
            raise ValueError("--eval-scoring cache has no memory to cache in translation: use "
                             "--eval-scoring knnlm (kNN-MT) or trime (TrimeMT_ext)")

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        refuse_empty_sentences(split, self.datasets[split])
        if split != self.cfg.train_subset or self.cfg.batching != "bm25":
            return
        from trime.mt.bm25_order import load_bm25_order

        pairs = self.datasets[split]
        order = load_bm25_order(self.cfg.bm25_batches, len(pairs), self.cfg.source_lang,
                                self.cfg.target_lang, self.tgt_dict)
        logger.info(f"TRIME: {split}: {len(pairs):,} pairs in the BM25 order of "
                    f"{self.cfg.bm25_batches}")
        self.datasets[split] = BM25OrderedPairs(pairs, order)

    def build_dataset_for_inference(self, src_tokens, src_lengths, constraints=None):
        """fairseq-interactive's input lines, refused when one is empty (only its end-of-sentence
        token is left: the model would translate nothing into something)."""
        empty = [i + 1 for i, length in enumerate(src_lengths) if length <= 1]
        if empty:
            raise ValueError(f"input line {empty[0]} of this batch is empty: give a sentence to "
                             "translate on every line")
        return super().build_dataset_for_inference(src_tokens, src_lengths, constraints)

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, **kwargs):
        """fairseq's generator; with --eval-memory ext its model steps with the datastore
        (``MemoryEnsemble``). Validation BLEU in fairseq-train (--eval-bleu) keeps the plain
        model unless memory is asked for."""
        if self.memory.eval_memory != "ext":
            return super().build_generator(models, args, seq_gen_cls, extra_gen_cls_kwargs, **kwargs)
        retriever, key_type = self.open_external_memory(models[0])
        return self.build_memory_generator(models, args, self.memory, retriever, key_type,
                                           seq_gen_cls, extra_gen_cls_kwargs, **kwargs)

    def build_memory_generator(self, models, args, settings, retriever, key_type,
                               seq_gen_cls=None, extra_gen_cls_kwargs=None, **kwargs):
        """fairseq's generator over ``MemoryEnsemble(models, retriever, settings, key_type)``
        (``build_generator`` with this task's options; ``trime-mt-tune`` with each grid point's)."""
        from trime.mt.generation import MemoryEnsemble

        if getattr(args, "score_reference", False) or getattr(args, "print_alignment", None):
            raise ValueError("--score-reference and --print-alignment are not supported with "
                             "--eval-memory ext: drop them, or decode without the datastore")
        logger.info(f"TRIME: decoding with {settings.describe()}, key {key_type}")
        ensemble = MemoryEnsemble(models, retriever, settings, key_type)
        return super().build_generator(ensemble, args, seq_gen_cls, extra_gen_cls_kwargs, **kwargs)

    def open_external_memory(self, model):
        """(retriever, key type) of --dstore, checked against this direction, both dictionaries
        and the model's key dimension."""
        from trime.extmem.datastore import Datastore
        from trime.extmem.retrieval import retriever_for
        from trime.extmem.fingerprints import dictionary_checksum
        from trime.mt.datastore import KIND, key_dim

        settings = self.memory
        datastore = Datastore.open(settings.dstore, self.tgt_dict)
        meta = datastore.meta
        rebuild = (f"build one with `trime-mt-datastore DATA --path CKPT -s {self.cfg.source_lang} "
                   f"-t {self.cfg.target_lang} --save-dstore DIR`")
        if meta.get("kind") != KIND:
            raise ValueError(f"{datastore.path} is not a datastore of parallel data: {rebuild}")
        direction = (meta.get("source_lang"), meta.get("target_lang"))
        if direction != (self.cfg.source_lang, self.cfg.target_lang) or \
                meta.get("source_dictionary_checksum") != dictionary_checksum(self.src_dict):
            raise ValueError(f"{datastore.path} was built for {direction[0]}->{direction[1]} with "
                             f"other dictionaries than this {self.cfg.source_lang}->"
                             f"{self.cfg.target_lang} data: {rebuild}")
        key_type = meta["key_type"]
        dim = key_dim(model, key_type)
        if dim != datastore.dim:
            raise ValueError(f"{datastore.path} holds keys of dimension {datastore.dim}, this "
                             f"model's {key_type} keys have {dim}: {rebuild}")
        return retriever_for(datastore, settings), key_type
