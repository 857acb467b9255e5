"""``--criterion trime_mt_loss``: the TRIME objective (paper Eq. 5) for a translation decoder.

The memory of a target token is every target token of the *other* sentences of the batch
(§5.4: no local memory in MT; the ext rule with the own sentence always left out), keyed by
the decoder representation ``--mt-key``. A memory logit is g·g' / √d / ``--memory-temp`` (an
option of ``--task trime_translation``, which decoding with TrimeMT_ext uses too);
with ``--memory-topk k`` each token keeps only its k most similar memory entries, whatever
their labels (as the authors' ``--topk-mem``). The math is ``trime.core.objective`` (chunked:
never a dense [tokens × memory] matrix for the whole batch); this file gathers the tensors
from the fairseq model and logs.

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

import logging
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum
from omegaconf import II

from trime.core.objective import batch_memory_logsumexp, trime_nll
from trime.glue import vocab
from trime.glue.distributed import DUMMY_BATCH, across_workers_logsumexp, data_parallel_world
from trime.glue.options import TrainingMemoryOptions, explain_logged_losses
from trime.mt.keys import MT_KEYS, features_and_keys
from trime.mt.task import TrimeTranslationTask

logger = logging.getLogger(__name__)


@dataclass
class TrimeMTLossConfig(TrainingMemoryOptions):
    mt_key: ChoiceEnum(list(MT_KEYS)) = field(
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
class TrimeMTLoss(FairseqCriterion):
    # fairseq passes every config field by name: the defaults live there alone
    def __init__(self, task, mt_key, memory_topk, label_smoothing, ce_warmup_updates,
                 memory_chunk_size, memory_kernel, memory_across_workers, sentence_avg):
        super().__init__(task)
        if not isinstance(task, TrimeTranslationTask):
            raise ValueError(f"--criterion trime_mt_loss needs --task trime_translation (got "
                             f"{type(task).__name__}): that task tells the loss the update number "
                             "(CE warm-up); it reads the same data as --task translation.")
        if str(mt_key) not in MT_KEYS:
            raise ValueError(f"--mt-key must be one of {', '.join(MT_KEYS)}, got {mt_key!r}")
        memory_temp = task.cfg.memory_temp  # a task option: one τ for Eq. 5 and Eq. 6
        if not memory_temp > 0:
            raise ValueError(f"--memory-temp must be > 0, got {memory_temp}")
        if memory_topk is not None and memory_topk < 1:
            raise ValueError(f"--memory-topk must be >= 1 (or left out for every entry), got "
                             f"{memory_topk}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {label_smoothing}")
        if ce_warmup_updates < 0:
            raise ValueError(f"--ce-warmup-updates must be >= 0, got {ce_warmup_updates}")
        if memory_chunk_size < 1:
            raise ValueError(f"--memory-chunk-size must be >= 1, got {memory_chunk_size}")
        self.mt_key = str(mt_key)
        self.memory_temp = float(memory_temp)
        self.memory_topk = memory_topk
        self.eps = float(label_smoothing)
        self.ce_warmup_updates = ce_warmup_updates
        explain_logged_losses(logger, ce_warmup_updates)
        self.memory_chunk_size = memory_chunk_size
        self.memory_kernel = str(memory_kernel)
        self.memory_across_workers = bool(memory_across_workers)
        self.sentence_avg = sentence_avg
        self.vocab_size = len(task.target_dictionary)  # V of the output projection
        self.num_updates = 0

    def set_num_updates(self, num_updates):
        self.num_updates = num_updates

    def forward(self, model, sample, reduce=True):
        net_input, target = sample["net_input"], sample["target"]
        features, _, query = features_and_keys(
            model.decoder, lambda: model(**net_input, features_only=True), self.mt_key)
        target_score, log_partition, smoothing = self._vocab_terms(model.decoder, features, target)
        lm_nll = log_partition - target_score
        scored = target.ne(self.padding_idx)
        if model.training and self.num_updates < self.ce_warmup_updates:
            nll = lm_nll
        else:  # Eq. 5 over the other sentences' target tokens
            lse_all, lse_pos = self._memory_logsumexp(model, query, target, scored, sample)
            nll = trime_nll(target_score, log_partition, lse_all, lse_pos)
        loss = nll
        if self.eps > 0:
            eps_i = self.eps / (self.vocab_size - 1)
            loss = (1.0 - self.eps - eps_i) * nll + eps_i * smoothing
        ntokens = sample["ntokens"]
        nsentences = target.size(0)
        sample_size = nsentences if self.sentence_avg else ntokens
        loss = loss[scored].sum()
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll[scored].sum().data,
            "lm_loss": lm_nll[scored].sum().data,
            "ntokens": ntokens,
            "nsentences": nsentences,
            "sample_size": sample_size,
        }
        return loss, sample_size, logging_output

    def _memory_logsumexp(self, model, query, target, scored, sample):
        """log Σ exp over the memory (all / with the target's label), fp32 [B, T]: the other
        sentences of this batch, or with --memory-across-workers of every worker's batch (the
        pairs' dataset ids tell the sentences apart across workers)."""
        options = dict(keep_local=False, temperature=self.memory_temp, top_k=self.memory_topk,
                       kernel=self.memory_kernel)
        _, world_size, _ = data_parallel_world()
        if not (self.memory_across_workers and model.training and world_size > 1):
            return batch_memory_logsumexp("ext", query, target, target, scored,
                                          self.memory_chunk_size, **options)
        return across_workers_logsumexp(
            "ext", query, target, target, scored, self.memory_chunk_size,
            torch.zeros_like(target), sample["id"], self.padding_idx,
            bool(sample.get(DUMMY_BATCH, False)), **options)

    def _vocab_terms(self, decoder, features, target):
        """s_y, log Z_vocab and, with label smoothing, Σ_v -log p_vocab(v), all fp32 [B, T]."""
        if getattr(decoder, "adaptive_softmax", None) is not None:
            if self.eps > 0:
                raise ValueError("--label-smoothing needs the whole vocabulary distribution, and "
                                 "this decoder has an adaptive softmax: drop --label-smoothing or "
                                 "--adaptive-softmax-cutoff")
            target_score, log_partition = vocab.target_scores(decoder, features, target)
            return target_score, log_partition, None
        logits = decoder.output_layer(features)
        target_log_prob, log_partition = vocab.softmax_target_log_prob(logits, target)
        smoothing = None
        if self.eps > 0:  # Σ_v -log p(v) = V log Z - Σ_v s_v
            smoothing = self.vocab_size * log_partition - logits.float().sum(-1)
        return target_log_prob + log_partition, log_partition, smoothing

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        sample_size, ntokens = total("sample_size"), total("ntokens")
        # base 2, like fairseq's label_smoothed_cross_entropy
        metrics.log_scalar("loss", total("loss") / sample_size / math.log(2), sample_size, round=3)
        metrics.log_scalar("nll_loss", total("nll_loss") / ntokens / math.log(2), ntokens, round=3)
        metrics.log_scalar("lm_loss", total("lm_loss") / ntokens / math.log(2), ntokens, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        metrics.log_derived("lm_ppl", lambda meters: utils.get_perplexity(meters["lm_loss"].avg))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
