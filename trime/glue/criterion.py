"""What ``--criterion trime_loss`` (LM) and ``trime_mt_loss`` (MT) share: a fairseq criterion
around ``trime.core.objective.TrimeObjective``.

fairseq builds a criterion from its config and tells it nothing of the update number; trime's
tasks do (``trime.glue.task.TrimeTask``), so the CE warm-up and the local-drop draw can depend on
it. This base holds the objective, the update number, the choice between the batch and the
global batch across workers as memory (``--memory-across-workers``), the logged sums and their
base-2 reduction. The LM and MT criteria add only how they read g(c), the vocabulary terms and
the memory layout from their models and batches.
"""

import functools
import logging
import math

from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion

from trime.core.objective import LossTerms, TrimeObjective
from trime.core.distributed import across_workers_logsumexp
from trime.glue.distributed import DUMMY_BATCH, data_parallel_world
from trime.glue.options import explain_logged_losses

logger = logging.getLogger(__name__)


class TrimeCriterion(FairseqCriterion):
    def __init__(self, task, memory_across_workers: bool, **objective):
        """``objective``: ``TrimeObjective``'s fields, from the criterion's options."""
        super().__init__(task)
        # the options of TrainingMemoryOptions, checked under their flags' names
        if objective["ce_warmup_updates"] < 0:
            raise ValueError(f"--ce-warmup-updates must be >= 0, got {objective['ce_warmup_updates']}")
        if objective["chunk_size"] < 1:
            raise ValueError(f"--memory-chunk-size must be >= 1, got {objective['chunk_size']}")
        self.objective = objective = TrimeObjective(**objective)
        self.memory_across_workers = bool(memory_across_workers)
        self.num_updates = 0
        if objective.rule != "none":
            explain_logged_losses(logger, objective.ce_warmup_updates)

    def set_num_updates(self, num_updates):
        self.num_updates = num_updates

    def global_batch_memory(self, training: bool, sample):
        """``batch_memory_logsumexp``'s stand-in over every worker's batch when
        --memory-across-workers applies (training, several workers, a rule that crosses
        segments; every worker calls it together), else None (the batch is the memory)."""
        group, world_size, _ = data_parallel_world()
        if not (self.memory_across_workers and training and world_size > 1
                and self.objective.rule not in ("none", "local")):
            return None
        return functools.partial(across_workers_logsumexp, pad_index=self.padding_idx,
                                 dummy_batch=bool(sample.get(DUMMY_BATCH, False)), group=group)

    @staticmethod
    def summed(terms: LossTerms, scored, sample_size, ntokens, nsentences):
        """The loss to optimise (summed over the scored tokens) and the logging output."""
        loss = terms.loss[scored].sum()
        return loss, {"loss": loss.data, "nll_loss": terms.nll[scored].sum().data,
                "lm_loss": terms.lm_nll[scored].sum().data, "ntokens": ntokens,
                "nsentences": nsentences, "sample_size": sample_size}

    @staticmethod
    def log_losses(logging_outputs, per, ppl_of: str) -> None:
        """Each loss in ``per`` (name -> the count it is averaged over) in bits, as fairseq's
        own criteria log; ppl from ``ppl_of``, lm_ppl from lm_loss."""
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        for name, count in per.items():
            metrics.log_scalar(name, total(name) / total(count) / math.log(2), total(count), round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters[ppl_of].avg))
        metrics.log_derived("lm_ppl", lambda meters: utils.get_perplexity(meters["lm_loss"].avg))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
