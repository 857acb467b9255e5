"""``TrimeLoss``: the TRIME training objective (paper Eq. 5) for a ``transformers`` causal LM.

    loss = TrimeLoss(model, memory="local")(input_ids, labels=labels).loss
    loss.backward()

Calling it runs the model once, takes g(c) from the last FFN's input (``trime.hf.architectures``)
and the vocabulary terms from the logits, and hands both to ``trime.core.objective.TrimeObjective``
(the objective fairseq's ``trime_loss`` uses). Labels follow ``transformers``: position t predicts
``labels[t + 1]``, -100 is ignored (neither scored nor a memory entry); memory entry j is
(g(c_j), labels[j + 1]), as in the paper's M = {(g(c_j), x_j)}.

Memories (``memory``, §4): ``none`` (the plain LM loss, Eq. 1), ``local`` (the earlier tokens of
the same row), ``long`` (also every token of the earlier rows of the same document: pass
``doc_ids`` and ``segment_starts``, e.g. from ``trime.hf.data.ConsecutiveSegments``), ``ext``
(every token of the other rows of the batch, plus the own row's earlier tokens unless dropped
with probability ``local_drop_prob``, once per batch; BM25 batches: ``trime.hf.data``).
"""

import functools
from dataclasses import dataclass

import torch

from trime.core.distributed import across_workers_logsumexp
from trime.core.objective import TrimeObjective, VocabTerms, keeps_own_segment
from trime.core.softmax import softmax_target_log_prob
from trime.hf.architectures import LastFFNInput

IGNORE = -100  # transformers' ignored label
EXT_LOCAL_DROP_PROB = 0.9  # p of §4.3 / Appendix H (fairseq's --local-drop-prob default too)


@dataclass
class TrimeLossOutput:
    """``loss``: the mean TRIME loss per target token (differentiable); ``lm_loss``: the mean
    vocabulary-only NLL of the same tokens (no gradient); ``num_tokens``: how many targets were
    scored; ``used_memory``: False during the CE warm-up and for memory ``none``; ``logits``: the
    model's, as it returned them."""

    loss: torch.Tensor
    lm_loss: torch.Tensor
    num_tokens: int
    used_memory: bool
    logits: torch.Tensor


class TrimeLoss:
    """The TRIME loss of ``model`` (see the module docstring).

    memory: none | local | long | ext. temperature: τ of the memory logits (1 in the paper's
    training). local_drop_prob: ext only, p of §4.3 (default 0.9). ce_warmup_steps: train with the
    plain LM loss for the first steps (§5.2). detach_memory: keys carry no gradient (Table 11).
    memory_across_workers: under torch.distributed (DDP, ``accelerate``, ``Trainer``), every
    worker's loss sees every worker's batch as memory (long, ext; exact gradients through a
    differentiable all-gather). ffn_module: the dotted name of the module whose input is g(c),
    for a model outside ``trime.hf.architectures.ARCHITECTURES``. chunk_size, kernel: how the
    memory sums run (``trime.core.memory_lse``). seed: of the local-drop draw.
    """

    def __init__(self, model, memory: str = "local", temperature: float = 1.0,
                 local_drop_prob: float = None, ce_warmup_steps: int = 0,
                 detach_memory: bool = False, memory_across_workers: bool = False,
                 ffn_module: str = None, chunk_size: int = 1024, kernel: str = "auto", seed: int = 1):
        self.objective = TrimeObjective(memory, temperature=temperature, detach_keys=detach_memory,
                                        ce_warmup_updates=ce_warmup_steps, chunk_size=chunk_size,
                                        kernel=kernel)
        if local_drop_prob is not None and memory != "ext":
            raise ValueError(f"local_drop_prob applies to memory='ext' only (got memory={memory!r})")
        self.local_drop_prob = EXT_LOCAL_DROP_PROB if local_drop_prob is None else local_drop_prob
        if not 0.0 <= self.local_drop_prob <= 1.0:
            raise ValueError(f"local_drop_prob must be in [0, 1], got {local_drop_prob}")
        self.model = model
        self.memory_across_workers = memory_across_workers
        self.seed = seed
        self.capture = LastFFNInput(model, ffn_module)
        self.training_calls = 0  # training calls made without a step: the next one's step
        self._draw = (None, 0)   # (step, draws made in it): one local-drop draw per batch

    def __call__(self, input_ids, labels=None, attention_mask=None, doc_ids=None,
                 segment_starts=None, step: int = None, model=None, **model_inputs) -> TrimeLossOutput:
        """``input_ids`` [B, T]; ``labels`` (default: ``input_ids`` with padding, where
        ``attention_mask`` is 0, ignored); ``doc_ids`` [B] or [B, T] and ``segment_starts`` [B]
        (corpus offsets) for long memory; ``step``: the optimiser step (CE warm-up, local-drop
        draw; default: this object's count of training calls); ``model``: what to call for the
        forward pass if not the model itself (e.g. its DDP wrapper). Other keyword arguments go
        to the model."""
        model = self.model if model is None else model
        training = model.training
        if step is None:  # each training call without a step is the next step
            step = self.training_calls
            self.training_calls += int(training)
        if labels is None:
            labels = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, IGNORE)
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, **model_inputs)
        g = self.capture.pop(input_ids.shape)[:, :-1]
        targets = labels[:, 1:]
        scored = targets != IGNORE
        targets = targets.masked_fill(~scored, 0)
        # log p(w*) and log Z in fp32 (fp64 for an fp64 model), one fused backward over [N, V]
        target_log_prob, log_partition = softmax_target_log_prob(outputs.logits[:, :-1], targets)
        vocab = VocabTerms(target_log_prob + log_partition, log_partition)
        rule = self.objective.rule
        uses_memory = self.objective.uses_memory(training, step)
        if rule == "long" and uses_memory and (doc_ids is None or segment_starts is None):
            raise ValueError("memory='long' needs doc_ids and segment_starts (each row's document "
                             "and corpus offset): batch consecutive segments with "
                             "trime.hf.data.ConsecutiveSegments, which gives both")
        global_memory = self._global_memory(training, uses_memory)
        if global_memory is not None and segment_starts is None:  # ext: rows need only be told apart
            import torch.distributed as dist

            rows = torch.arange(input_ids.shape[0], device=input_ids.device)
            segment_starts, doc_ids = dist.get_rank() * (1 << 40) + rows, torch.zeros_like(rows)
        if doc_ids is not None:
            doc_ids = (doc_ids[:, None].expand(input_ids.shape) if doc_ids.dim() == 1 else doc_ids)[:, :-1]
        terms = self.objective(
            vocab, g, targets, targets, scored, training=training, num_updates=step,
            doc_ids=doc_ids, segment_starts=segment_starts,
            keep_local=self._keep_local(training, step) if uses_memory else True,
            memory_logsumexp=global_memory)
        num_tokens = int(scored.sum())
        denominator = max(num_tokens, 1)
        return TrimeLossOutput(terms.loss[scored].sum() / denominator,
                               terms.lm_nll[scored].sum().detach() / denominator, num_tokens,
                               uses_memory, outputs.logits)

    def _keep_local(self, training: bool, step: int) -> bool:
        """ext: keep the own row's earlier tokens in this batch (§4.3; training only)."""
        if self.objective.rule != "ext" or not training:
            return True
        last_step, draws = self._draw
        draw = draws if last_step == step else 0
        self._draw = (step, draw + 1)
        return keeps_own_segment(self.local_drop_prob, self.seed, step, draw)

    def _global_memory(self, training: bool, uses_memory: bool):
        import torch.distributed as dist

        if not (self.memory_across_workers and training and uses_memory
                and self.objective.rule in ("long", "ext")
                and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return None
        return functools.partial(across_workers_logsumexp, pad_index=0)

    def remove(self):
        """Take the g(c) hook off the model (the model is left as it was)."""
        self.capture.remove()
