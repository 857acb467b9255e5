"""``--criterion trime_mt_loss``: the TRIME objective (paper Eq. 5) for a translation decoder.

The memory of a target token is every target token of the *other* sentences of the batch
(§5.4: no local memory in MT; the ext rule with the own sentence always left out), keyed by
the decoder representation ``--mt-key``. A memory logit is g·g' / √d / ``--memory-temp`` (an
option of ``--task trime_translation``, which decoding with TrimeMT_ext uses too);
with ``--memory-topk k`` each token keeps only its k most similar memory entries, whatever
their labels (as the authors' ``--topk-mem``). The objective is
``trime.core.objective.TrimeObjective`` (shared with ``trime_loss`` through
``trime.glue.criterion``; chunked: never a dense [tokens × memory] matrix for the whole batch);
this file reads the decoder's keys and vocabulary terms.

Label smoothing (``--label-smoothing ε``), made explicit: per token

    loss = (1 - ε - ε/(V-1)) · (-log P_Eq5(y)) + ε/(V-1) · Σ_v -log p_vocab(v)

i.e. fairseq's ``label_smoothed_cross_entropy`` with its NLL replaced by Eq. 5's. The
smoothing term acts on the vocabulary softmax only: smoothing towards memory entries would
spread mass over whatever tokens the batch happens to hold, which is no uniform prior. With
no memory visible (a one-sentence batch, the CE warm-up) the loss is fairseq's exactly; with
ε = 0 (the authors' setting: their criterion ignores ε) it is Eq. 5 exactly.

Logged: ``loss`` (what is optimised), ``nll_loss`` (-log P_Eq5, the perplexity ``ppl``) and
``lm_loss`` (the vocabulary-only NLL of the same model, ``lm_ppl``).
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.criterions import register_criterion
from fairseq.dataclass import ChoiceEnum
from omegaconf import II

from trime.core.objective import VocabTerms
from trime.core.softmax import softmax_target_log_prob
from trime.glue import vocab
from trime.glue.criterion import TrimeCriterion
from trime.glue.options import TrainingMemoryOptions
from trime.glue.query import features_and_key
from trime.settings import DECODER_KEYS
from trime.mt.task import TrimeTranslationTask


@dataclass
class TrimeMTLossConfig(TrainingMemoryOptions):
    mt_key: ChoiceEnum(list(DECODER_KEYS)) = field(
        default="final",
        metadata={"help": "the decoder representation that is query and memory key: final = the "
                  "decoder output that feeds the output projection (after the final LayerNorm; "
                  "what the authors' MT code uses); last-ffn-input = the input of the last decoder "
                  "layer's FFN (paper Appendix C's g, and the LM's)"},
    )
    memory_topk: Optional[int] = field(
        default=None,
        metadata={"help": "keep only each token's k most similar memory entries, whatever their "
                  "labels (the authors' IWSLT recipe: 8); the gradient flows through the kept "
                  "similarities only, the choice itself is not differentiated (as through "
                  "torch.topk's values). Default: every entry"},
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={"help": "ε: fairseq's label smoothing with Eq. 5's NLL; the smoothing term acts "
                  "on the vocabulary softmax (see trime/mt/criterion.py). 0 = Eq. 5 exactly"},
    )
    sentence_avg: bool = II("optimization.sentence_avg")


@register_criterion("trime_mt_loss", dataclass=TrimeMTLossConfig)
class TrimeMTLoss(TrimeCriterion):
    # fairseq passes every config field by name: the defaults live there alone
    def __init__(self, task, mt_key, memory_topk, label_smoothing, ce_warmup_updates,
                 memory_chunk_size, memory_kernel, memory_across_workers, sentence_avg):
        if not isinstance(task, TrimeTranslationTask):
            raise ValueError(f"--criterion trime_mt_loss needs --task trime_translation (got "
                             f"{type(task).__name__}): that task tells the loss the update number "
                             "(CE warm-up); it reads the same data as --task translation.")
        if str(mt_key) not in DECODER_KEYS:
            raise ValueError(f"--mt-key must be one of {', '.join(DECODER_KEYS)}, got {mt_key!r}")
        memory_temp = task.cfg.memory_temp  # a task option: one τ for Eq. 5 and Eq. 6
        if not memory_temp > 0:
            raise ValueError(f"--memory-temp must be > 0, got {memory_temp}")
        if memory_topk is not None and memory_topk < 1:
            raise ValueError(f"--memory-topk must be >= 1 (or left out for every entry), got "
                             f"{memory_topk}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {label_smoothing}")
        # §5.4: a target token's memory is the other sentences' target tokens (ext, own left out)
        super().__init__(task, memory_across_workers, rule="ext", temperature=float(memory_temp),
                         top_k=memory_topk, label_smoothing=float(label_smoothing),
                         ce_warmup_updates=ce_warmup_updates, chunk_size=memory_chunk_size,
                         kernel=str(memory_kernel))
        self.mt_key = str(mt_key)
        self.sentence_avg = sentence_avg
        self.vocab_size = len(task.target_dictionary)  # V of the output projection

    def forward(self, model, sample, reduce=True):
        net_input, target = sample["net_input"], sample["target"]
        features, _, query = features_and_key(
            model.decoder, lambda: model(**net_input, features_only=True), self.mt_key)
        scored = target.ne(self.padding_idx)
        global_memory = self.global_batch_memory(model.training, sample)
        # across workers the pairs' dataset ids tell the sentences apart (and order them)
        layout = {} if global_memory is None else dict(doc_ids=torch.zeros_like(target),
                                                        segment_starts=sample["id"])
        losses = self.objective(
            self._vocab_terms(model.decoder, features, target), query, target, target, scored,
            training=model.training, num_updates=self.num_updates, keep_local=False,
            memory_logsumexp=global_memory, **layout)
        ntokens, nsentences = sample["ntokens"], target.size(0)
        sample_size = nsentences if self.sentence_avg else ntokens
        loss, output = self.summed(losses, scored, sample_size, ntokens, nsentences)
        return loss, sample_size, output

    def _vocab_terms(self, decoder, features, target) -> VocabTerms:
        """s_y, log Z_vocab and, with label smoothing, Σ_v -log p_vocab(v), all fp32 [B, T]."""
        label_smoothing = self.objective.label_smoothing
        if getattr(decoder, "adaptive_softmax", None) is not None:
            if label_smoothing > 0:
                raise ValueError("--label-smoothing needs the whole vocabulary distribution, and "
                                 "this decoder has an adaptive softmax: drop --label-smoothing or "
                                 "--adaptive-softmax-cutoff")
            return VocabTerms(*vocab.target_scores(decoder, features, target))
        logits = decoder.output_layer(features)
        target_log_prob, log_partition = softmax_target_log_prob(logits, target)
        smoothing = None
        if label_smoothing > 0:  # Σ_v -log p(v) = V log Z - Σ_v s_v
            smoothing = self.vocab_size * log_partition - logits.float().sum(-1)
        return VocabTerms(target_log_prob + log_partition, log_partition, smoothing, self.vocab_size)

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        # base 2, like fairseq's label_smoothed_cross_entropy
        cls.log_losses(logging_outputs, {"loss": "sample_size", "nll_loss": "ntokens",
                                         "lm_loss": "ntokens"}, "nll_loss")
