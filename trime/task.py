"""``--task trime_lm``: fairseq's language modeling task plus TRIME options.

Reads ``fairseq-preprocess`` output; segments are fixed blocks of
``--tokens-per-sample`` tokens (``--sample-break-mode none``), batched at random
(paper §4.1, Fig. 2a). The model is wrapped in ``TrimeLanguageModel`` so that
the criterion sees g(c) and ``fairseq-eval-lm`` can score with memory (Eq. 6).
"""

import logging
import os
from dataclasses import dataclass, field

from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

from trime.model import TrimeLanguageModel

logger = logging.getLogger(__name__)

EVAL_MEMORIES = ("none", "local")


@dataclass
class TrimeLMConfig(LanguageModelingConfig):
    batching: ChoiceEnum(["random"]) = field(
        default="random",
        metadata={"help": "how training segments are grouped into batches: random (paper "
                  "Fig. 2a); consecutive and bm25 come in later versions"},
    )
    eval_memory: ChoiceEnum(list(EVAL_MEMORIES)) = field(
        default="none",
        metadata={"help": "memory used when scoring (fairseq-eval-lm): none = the plain LM "
                  "distribution; local = Eq. 6 with the earlier tokens of the same input "
                  "(context window included)"},
    )
    memory_temp: float = field(
        default=1.0,
        metadata={"help": "evaluation temperature τ of Eq. 6; divides the memory logits only"},
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
        if args.memory_temp <= 0:
            raise ValueError(f"--memory-temp must be > 0, got {args.memory_temp}")

    def build_model(self, args, from_checkpoint=False):
        model = super().build_model(args, from_checkpoint)
        if getattr(args, "checkpoint_activations", False):
            raise ValueError(
                "TRIME does not support --checkpoint-activations: the hooked g(c) would be "
                "recomputed outside the autograd graph. Drop the flag."
            )
        eval_memory = str(self.args.eval_memory)
        logger.info(f"TRIME: eval memory = {eval_memory}, tau = {self.args.memory_temp}")
        return TrimeLanguageModel(model, eval_memory, self.args.memory_temp)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if hasattr(criterion, "set_num_updates"):
            criterion.set_num_updates(update_num)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def get_batch_iterator(self, dataset, **kwargs):
        # fairseq's batch_by_size drops the trailing segments that do not fill a
        # multiple of --required-batch-size-multiple (8 by default); for any split
        # but train that silently leaves tokens out of the reported perplexity.
        if dataset is not self.datasets.get("train"):
            kwargs["required_batch_size_multiple"] = 1
        return super().get_batch_iterator(dataset, **kwargs)
