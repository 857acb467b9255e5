"""What ``--task trime_lm`` and ``--task trime_translation`` add to their fairseq parents alike
(``TrimeTask``, a mixin placed before the parent class).

- fairseq's ``train_step`` tells a criterion neither the update number (the CE warm-up and the
  local-drop draw need it) nor whether a batch is the filler that ends an epoch (``ignore_grad``:
  its loss is zeroed, but it must still join a cross-worker all-gather): ``train_step`` does.
- fairseq 0.12 drops the last batch of a split when its size is not a multiple of
  --required-batch-size-multiple (default 8; facebookresearch/fairseq#5036), so evaluation and
  decoding would silently leave up to 7 segments or pairs out: outside the training split,
  ``get_batch_iterator`` cuts batches of any size.
- ``--bm25-batches FILE`` (``BM25BatchesOption``, both configs inherit it) and ``--batching bm25``
  come together (``check_bm25_options``).
"""

import inspect
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask

from trime.glue.distributed import DUMMY_BATCH


@dataclass
class BM25BatchesOption(FairseqDataclass):
    bm25_batches: Optional[str] = field(
        default=None,
        metadata={"help": "with --batching bm25: the file trime-bm25-batches wrote for this training "
                  "data (language modeling: with this --tokens-per-sample and --batch-size; "
                  "translation: with --source-lang S --target-lang T)"},
    )


class TrimeTask:
    @property
    def training_split(self) -> str:
        config = getattr(self, "cfg", None) or self.args
        return getattr(config, "train_subset", None) or "train"

    @staticmethod
    def check_bm25_options(batching: str, bm25_batches, how_to_make: str) -> None:
        """``how_to_make``: the command that writes the file for this task's data."""
        if batching == "bm25" and not bm25_batches:
            raise ValueError(f"--batching bm25 needs --bm25-batches FILE, {how_to_make}")
        if bm25_batches and batching != "bm25":
            raise ValueError(f"--bm25-batches is read with --batching bm25 only (got --batching "
                             f"{batching}): add --batching bm25, or drop --bm25-batches")

    def get_batch_iterator(self, dataset, *args, **kwargs):
        if dataset is not self.datasets.get(self.training_split):
            call = inspect.signature(FairseqTask.get_batch_iterator).bind(self, dataset, *args, **kwargs)
            call.arguments["required_batch_size_multiple"] = 1
            return super().get_batch_iterator(*call.args[1:], **call.kwargs)
        return super().get_batch_iterator(dataset, *args, **kwargs)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if hasattr(criterion, "set_num_updates"):  # a criterion without the hook ignores it
            criterion.set_num_updates(update_num)
        sample[DUMMY_BATCH] = bool(ignore_grad)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
