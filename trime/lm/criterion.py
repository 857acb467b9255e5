"""``--criterion trime_loss``: the TRIME training objective (paper Eq. 5).

Loss per token = -log P(w* | c) with P from Eq. 5, summed over non-pad tokens;
sample_size = ntokens. The math lives in ``trime.core.objective`` and
``trime.glue.vocab``; this file only gathers the tensors from the fairseq model and logs.
It needs a task whose models expose g(c) (``task.exposes_trime_query``; the model puts
it in ``extra["trime_query"]``, as ``--task trime_lm``'s wrapper does) and batches with
corpus offsets for long memory; it does not depend on the task class.

Logged: ``loss`` (what is optimised: TRIME, or plain LM during CE warm-up; at
validation always TRIME, i.e. Eq. 6 with τ = 1) and ``lm_loss`` (the true
vocabulary-only NLL of the same model, every word counted — unlike fairseq's
``adaptive_loss``).
"""

import logging
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum

from trime.core.objective import batch_memory_logsumexp, trime_nll
from trime.core.visibility import MEMORY_RULES, memory_labels
from trime.glue import vocab
from trime.glue.options import TrainingMemoryOptions, explain_logged_losses
from trime.glue.distributed import DUMMY_BATCH, across_workers_logsumexp, data_parallel_world

logger = logging.getLogger(__name__)

EXT_LOCAL_DROP_PROB = 0.9  # p of §4.3 / Appendix H when --local-drop-prob is not given
# none: the plain LM loss (Eq. 1) on every word, in training and validation: the vanilla baseline
TRAINING_MEMORIES = ("none", *MEMORY_RULES)


@dataclass
class TrimeLossConfig(TrainingMemoryOptions):
    memory: ChoiceEnum(list(TRAINING_MEMORIES)) = field(
        default="local",
        metadata={"help": "training memory (paper §4): none = no memory, the plain LM loss "
                  "(Eq. 1) on every word, exact with an adaptive softmax too (the vanilla "
                  "baseline); local = earlier tokens of the same "
                  "segment (TrimeLM); long = also every token of the earlier segments of the "
                  "same document in the batch (TrimeLM_long; use --batching consecutive); "
                  "ext = every token of the other segments of the batch, plus the own segment's "
                  "earlier tokens unless dropped (TrimeLM_ext, §4.3; see --local-drop-prob)"},
    )
    local_drop_prob: Optional[float] = field(
        default=None,
        metadata={"help": "--memory ext only: probability of leaving the own segment's earlier "
                  "tokens out of memory, drawn once per training batch (paper Table 15: "
                  f"{EXT_LOCAL_DROP_PROB}, the default for ext)"},
    )
    detach_memory: bool = field(
        default=False,
        metadata={"help": "memory keys carry no gradient, only the query g(c) does (the paper's "
                  "\"w/o back-prop to memory\" ablation, Table 11; stop-gradient memory as in "
                  "Transformer-XL); any --memory rule, also across workers"},
    )


@register_criterion("trime_loss", dataclass=TrimeLossConfig)
class TrimeLoss(FairseqCriterion):
    # fairseq passes every config field by name: the defaults live there alone
    def __init__(self, task, memory, ce_warmup_updates, local_drop_prob, memory_across_workers,
                 detach_memory, memory_chunk_size, memory_kernel):
        super().__init__(task)
        if not getattr(task, "exposes_trime_query", False):
            raise ValueError(
                f"--criterion trime_loss needs --task trime_lm (got {type(task).__name__}): "
                "that task exposes g(c), the input of the last FFN, to the loss.")
        if str(memory) not in TRAINING_MEMORIES:
            raise ValueError(f"--memory must be one of {', '.join(TRAINING_MEMORIES)}, got {memory!r}")
        if str(memory) == "none" and (detach_memory or memory_across_workers):
            raise ValueError("--detach-memory and --memory-across-workers act on the memory, and "
                             "--memory none has none: drop them or choose a memory rule")
        if ce_warmup_updates < 0:
            raise ValueError(f"--ce-warmup-updates must be >= 0, got {ce_warmup_updates}")
        if memory_chunk_size < 1:
            raise ValueError(f"--memory-chunk-size must be >= 1, got {memory_chunk_size}")
        self.memory = str(memory)
        self.ce_warmup_updates = ce_warmup_updates
        self.memory_chunk_size = memory_chunk_size
        self.memory_kernel = str(memory_kernel)
        self.memory_across_workers = memory_across_workers
        self.detach_memory = bool(detach_memory)
        if local_drop_prob is not None and self.memory != "ext":
            raise ValueError(f"--local-drop-prob applies to --memory ext only (got --memory {memory}); "
                             "drop the option or use --memory ext.")
        self.local_drop_prob = EXT_LOCAL_DROP_PROB if local_drop_prob is None else local_drop_prob
        if not 0.0 <= self.local_drop_prob <= 1.0:
            raise ValueError(f"--local-drop-prob must be in [0, 1], got {local_drop_prob}")
        if self.memory != "none":
            explain_logged_losses(logger, ce_warmup_updates)
        self.seed = getattr(task.args, "seed", 1)
        self.forwards_this_update = 0
        self.num_updates = 0

    def set_num_updates(self, num_updates):
        if num_updates != self.num_updates:
            self.forwards_this_update = 0
        self.num_updates = num_updates

    def _keep_local(self, training):
        """--memory ext: drop the own segment for this batch with probability p (training only).

        Drawn from (seed, update, forward within the update): the same on every worker
        and after a resume.
        """
        if self.memory != "ext" or not training:
            return True
        draw = np.random.default_rng([self.seed, self.num_updates, self.forwards_this_update]).random()
        self.forwards_this_update += 1
        return bool(draw >= self.local_drop_prob)

    def forward(self, model, sample, reduce=True):
        src_tokens = sample["net_input"]["src_tokens"]
        features, extra = model(**sample["net_input"], features_only=True)
        if "trime_query" not in extra:
            raise ValueError("--criterion trime_loss needs a model that exposes g(c), the input "
                             "of the last FFN: use --task trime_lm.")
        query = extra["trime_query"]
        if model.training and not query.requires_grad:
            raise ValueError(
                "g(c) carries no gradient: TRIME does not support --checkpoint-activations "
                "(the hooked activation is recomputed outside the graph)."
            )
        target = sample["target"]
        target_score, log_partition = vocab.target_scores(model.decoder, features, target)
        lm_nll = log_partition - target_score
        scored = target.ne(self.padding_idx)

        if self.memory == "none" or (model.training and self.num_updates < self.ce_warmup_updates):
            nll = lm_nll
        else:
            lse_all, lse_pos = self._memory_logsumexp(model, query, src_tokens, target, sample)
            nll = trime_nll(target_score, log_partition, lse_all, lse_pos)

        loss = nll[scored].sum()
        ntokens = sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "lm_loss": lm_nll[scored].sum().data,
            "ntokens": ntokens,
            "nsentences": src_tokens.size(0),
            "sample_size": ntokens,
        }
        return loss, ntokens, logging_output

    def _memory_logsumexp(self, model, query, src_tokens, target, sample):
        labels, valid = memory_labels(src_tokens, target, self.padding_idx)
        doc_ids, starts = sample.get("trime_doc"), sample.get("trime_segment_start")
        if self.memory == "long" and (doc_ids is None or starts is None):
            raise ValueError("--memory long needs each segment's corpus offset and document ids: "
                             "use --task trime_lm")
        dummy_batch = bool(sample.get(DUMMY_BATCH, False))
        keep_local = self._keep_local(model.training)
        _, world_size, _ = data_parallel_world()
        across = (self.memory_across_workers and model.training and self.memory != "local"
                  and world_size > 1)
        if not across:
            return batch_memory_logsumexp(self.memory, query, labels, target, valid,
                                          self.memory_chunk_size, doc_ids, starts,
                                          keep_local=keep_local, detach_keys=self.detach_memory,
                                          kernel=self.memory_kernel)
        if doc_ids is None or starts is None:
            raise ValueError("--memory-across-workers needs the segment offsets that --task "
                             "trime_lm adds to every batch")
        return across_workers_logsumexp(self.memory, query, labels, target, valid,
                                        self.memory_chunk_size, doc_ids, starts, self.padding_idx,
                                        dummy_batch, keep_local=keep_local,
                                        detach_keys=self.detach_memory, kernel=self.memory_kernel)

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        loss_sum = sum(log.get("loss", 0) for log in logging_outputs)
        lm_loss_sum = sum(log.get("lm_loss", 0) for log in logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        # base 2, like fairseq's cross_entropy and fairseq-eval-lm
        metrics.log_scalar("loss", loss_sum / sample_size / math.log(2), sample_size, round=3)
        metrics.log_scalar("lm_loss", lm_loss_sum / sample_size / math.log(2), sample_size, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["loss"].avg))
        metrics.log_derived("lm_ppl", lambda meters: utils.get_perplexity(meters["lm_loss"].avg))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
