"""``--task trime_translation``: fairseq's translation task, for training with TRIME.

Everything ``--task translation`` does keeps working (it is the parent class, options and
all). What it adds: the criterion is told the update number (``trime_mt_loss``'s CE warm-up)
and whether a batch is fairseq's end-of-epoch filler (``trime.glue.train_step``).
"""

from dataclasses import dataclass

from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from trime.glue.train_step import tell_criterion


@dataclass
class TrimeTranslationConfig(TranslationConfig):
    """fairseq's translation options."""


@register_task("trime_translation", dataclass=TrimeTranslationConfig)
class TrimeTranslationTask(TranslationTask):
    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        tell_criterion(sample, criterion, update_num, ignore_grad)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
