"""Perplexity of a ``transformers`` causal LM with evaluation memory (paper §4, Eq. 6-9), and the
continuous-cache and kNN-LM baselines, on the scorer the fairseq side uses
(``trime.glue.scorer.MemoryScorer``) with the same options (``trime.settings.EvalSettings``).

The split is ``trime.hf.data.Segments`` scored in stream order, ``batch_size`` segments at a
time: each segment's own earlier tokens are local memory, a FIFO of the document's last
``long_memory_size`` scored tokens before it is long memory (``local,long``), and the datastore
of a retriever (``trime.extmem.retrieval``) is external memory (``...,ext``). Every token but
the split's first is a target once.

    settings = EvalSettings(eval_memory="local,long", long_memory_size=4096)
    result = evaluate(model, Segments(documents, 512), settings)   # {"perplexity", "loss", "tokens"}
"""

import math

import torch

from trime.glue.scorer import MemoryScorer
from trime.hf.architectures import LastFFNInput
from trime.hf.data import collate_segments
from trime.settings import EvalSettings

PAD = -1  # padding of targets and inputs inside the scorer (never a token id)


def scorer_sample(batch) -> dict:
    """A collated batch as the scorer reads it: targets (the next tokens; padding PAD), inputs,
    each target's stream offset and document."""
    labels = batch["labels"]
    target = labels[:, 1:].masked_fill(labels[:, 1:] == -100, PAD)
    inputs = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, PAD)[:, :-1]
    positions = torch.arange(1, labels.shape[1], device=labels.device)
    return {"target": target, "net_input": {"src_tokens": inputs},
            "trime_label_offset": batch["segment_starts"][:, None] + positions[None],
            "trime_doc": batch["doc_ids"][:, 1:]}


@torch.no_grad()
def evaluate(model, segments, settings: EvalSettings, retriever=None, batch_size: int = 8,
             ffn_module: str = None) -> dict:
    """{"loss" (bits per token), "perplexity", "tokens"} of every target of ``segments`` under
    ``settings``; ``retriever``: the external memory's search (``...,ext``)."""
    if settings.save_dstore:
        raise ValueError("trime.hf.evaluation does not save datastores (save_dstore)")
    scorer = MemoryScorer(settings, None, PAD, retriever)
    capture = LastFFNInput(model, ffn_module)
    needs_final = settings.uses_cache and settings.cache_key == "final"
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    try:
        for start in range(0, len(segments), batch_size):
            batch = collate_segments([segments[i] for i in range(start, min(start + batch_size, len(segments)))])
            batch = {name: value.to(device) for name, value in batch.items()}
            outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            output_hidden_states=needs_final)
            extra = {"trime_query": capture.pop(batch["input_ids"].shape)[:, :-1]}
            if needs_final:  # the decoder output that feeds the LM head (after the final norm)
                extra["trime_final"] = outputs.hidden_states[-1][:, :-1]
            sample = scorer_sample(batch)
            log_probs = scorer.target_log_probs(outputs.logits[:, :-1], extra, sample)
            scored = sample["target"] != PAD
            total -= float(log_probs[scored].double().sum())
            tokens += int(scored.sum())
    finally:
        capture.remove()
        model.train(was_training)
    nats = total / max(tokens, 1)
    return {"loss": nats / math.log(2), "perplexity": math.exp(nats), "tokens": tokens}
