"""``--task trime_translation``: fairseq's translation task, for training with TRIME.

Everything ``--task translation`` does keeps working (it is the parent class, options and
all). What it adds:

- ``--batching bm25 --bm25-batches FILE``: the training pairs in the order of Algorithm 1's
  chain over their target sentences (``trime-bm25-batches --source-lang S --target-lang T``,
  ``trime.mt.bm25_order``) instead of fairseq's length-sorted order; fairseq's own
  ``--max-tokens`` batching then cuts the chain into batches, so similar target sentences
  share a batch, i.e. each other's memory (§5.4 with §4.3). The batches are shuffled per
  epoch as usual;
- the criterion is told the update number (``trime_mt_loss``'s CE warm-up) and whether a
  batch is fairseq's end-of-epoch filler (``trime.glue.train_step``).
"""

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from fairseq.data import BaseWrapperDataset
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from trime.glue.train_step import tell_criterion

logger = logging.getLogger(__name__)


@dataclass
class TrimeTranslationConfig(TranslationConfig):
    """fairseq's translation options and how training pairs are batched."""

    batching: ChoiceEnum(["random", "bm25"]) = field(
        default="random",
        metadata={"help": "how training pairs are grouped into batches: random = fairseq's "
                  "(pairs of similar length, batches shuffled); bm25 = the order of --bm25-batches "
                  "FILE, similar target sentences next to each other, cut into batches by "
                  "--max-tokens (paper §5.4, Algorithm 1)"},
    )
    bm25_batches: Optional[str] = field(
        default=None,
        metadata={"help": "with --batching bm25: the file written by `trime-bm25-batches DATA "
                  "--source-lang S --target-lang T` for this training data"},
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


@register_task("trime_translation", dataclass=TrimeTranslationConfig)
class TrimeTranslationTask(TranslationTask):
    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        if (cfg.batching == "bm25") != bool(cfg.bm25_batches):
            raise ValueError("--batching bm25 and --bm25-batches FILE go together (the file from "
                             "`trime-bm25-batches DATA --source-lang S --target-lang T` gives the "
                             "order; it is unused otherwise)")

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        if split != self.cfg.train_subset or self.cfg.batching != "bm25":
            return
        from trime.mt.bm25_order import load_bm25_order

        pairs = self.datasets[split]
        order = load_bm25_order(self.cfg.bm25_batches, len(pairs), self.cfg.source_lang,
                                self.cfg.target_lang, self.tgt_dict)
        logger.info(f"TRIME: {split}: {len(pairs):,} pairs in the BM25 order of "
                    f"{self.cfg.bm25_batches}")
        self.datasets[split] = BM25OrderedPairs(pairs, order)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        tell_criterion(sample, criterion, update_num, ignore_grad)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
