"""``--criterion trime_loss``: the TRIME training objective (paper Eq. 5).

Loss per token = -log P(w* | c) with P from Eq. 5, summed over non-pad tokens;
sample_size = ntokens. The objective is ``trime.core.objective.TrimeObjective`` (shared with
``trime_mt_loss`` through ``trime.glue.criterion``); this file only reads g(c), the vocabulary
terms (``trime.glue.vocab``) and the segments' layout from the fairseq model and batch.
It needs a task whose models expose g(c) (``task.exposes_trime_query``; the model puts
it in ``extra["trime_query"]``, as ``--task trime_lm``'s wrapper does) and batches with
corpus offsets for long memory; it does not depend on the task class.

Logged: ``loss`` (what is optimised: TRIME, or plain LM during CE warm-up; at
validation always TRIME, i.e. Eq. 6 with τ = 1) and ``lm_loss`` (the true
vocabulary-only NLL of the same model, every word counted — unlike fairseq's
``adaptive_loss``).
"""

from dataclasses import dataclass, field
from typing import Optional

from fairseq.criterions import register_criterion
from fairseq.dataclass import ChoiceEnum

from trime.core.objective import OBJECTIVE_RULES, VocabTerms, keeps_own_segment
from trime.core.visibility import memory_labels
from trime.glue import vocab
from trime.glue.criterion import TrimeCriterion
from trime.glue.options import TrainingMemoryOptions

EXT_LOCAL_DROP_PROB = 0.9  # p of §4.3 / Appendix H when --local-drop-prob is not given
# none: the plain LM loss (Eq. 1) on every word, in training and validation: the vanilla baseline
TRAINING_MEMORIES = OBJECTIVE_RULES


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
class TrimeLoss(TrimeCriterion):
    # fairseq passes every config field by name: the defaults live there alone
    def __init__(self, task, memory, ce_warmup_updates, local_drop_prob, memory_across_workers,
                 detach_memory, memory_chunk_size, memory_kernel):
        if not getattr(task, "exposes_trime_query", False):
            raise ValueError(
                f"--criterion trime_loss needs --task trime_lm (got {type(task).__name__}): "
                "that task exposes g(c), the input of the last FFN, to the loss.")
        if str(memory) not in TRAINING_MEMORIES:
            raise ValueError(f"--memory must be one of {', '.join(TRAINING_MEMORIES)}, got {memory!r}")
        if str(memory) == "none" and (detach_memory or memory_across_workers):
            raise ValueError("--detach-memory and --memory-across-workers act on the memory, and "
                             "--memory none has none: drop them or choose a memory rule")
        if local_drop_prob is not None and str(memory) != "ext":
            raise ValueError(f"--local-drop-prob applies to --memory ext only (got --memory {memory}); "
                             "drop the option or use --memory ext.")
        self.local_drop_prob = EXT_LOCAL_DROP_PROB if local_drop_prob is None else local_drop_prob
        if not 0.0 <= self.local_drop_prob <= 1.0:
            raise ValueError(f"--local-drop-prob must be in [0, 1], got {local_drop_prob}")
        super().__init__(task, memory_across_workers, rule=str(memory),
                         detach_keys=bool(detach_memory), ce_warmup_updates=ce_warmup_updates,
                         chunk_size=memory_chunk_size, kernel=str(memory_kernel))
        self.memory = str(memory)
        self.seed = getattr(task.args, "seed", 1)
        self.forwards_this_update = 0

    def set_num_updates(self, num_updates):
        if num_updates != self.num_updates:
            self.forwards_this_update = 0
        super().set_num_updates(num_updates)

    def _keep_local(self, training):
        """--memory ext: drop the own segment for this batch with probability p (training only),
        the same draw on every worker and after a resume (``keeps_own_segment``)."""
        if self.memory != "ext" or not training:
            return True
        draw = self.forwards_this_update
        self.forwards_this_update += 1
        return keeps_own_segment(self.local_drop_prob, self.seed, self.num_updates, draw)

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
        scored = target.ne(self.padding_idx)
        terms = VocabTerms(*vocab.target_scores(model.decoder, features, target))
        labels, valid = memory_labels(src_tokens, target, self.padding_idx)
        doc_ids, starts = sample.get("trime_doc"), sample.get("trime_segment_start")
        uses_memory = self.objective.uses_memory(model.training, self.num_updates)
        if uses_memory and self.memory == "long" and (doc_ids is None or starts is None):
            raise ValueError("--memory long needs each segment's corpus offset and document ids: "
                             "use --task trime_lm")
        global_memory = self.global_batch_memory(model.training, sample) if uses_memory else None
        if global_memory is not None and (doc_ids is None or starts is None):
            raise ValueError("--memory-across-workers needs the segment offsets that --task "
                             "trime_lm adds to every batch")
        losses = self.objective(
            terms, query, labels, target, valid, training=model.training,
            num_updates=self.num_updates, doc_ids=doc_ids, segment_starts=starts,
            keep_local=self._keep_local(model.training) if uses_memory else True,
            memory_logsumexp=global_memory)
        ntokens = sample["ntokens"]
        loss, output = self.summed(losses, scored, ntokens, ntokens, src_tokens.size(0))
        return loss, ntokens, output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        # base 2, like fairseq's cross_entropy and fairseq-eval-lm
        cls.log_losses(logging_outputs, {"loss": "sample_size", "lm_loss": "sample_size"}, "loss")
