"""Perplexity of a ``transformers`` causal LM with evaluation memory (paper §4, Eq. 6-9), and the
continuous-cache and kNN-LM baselines, on the scorer the fairseq side uses
(``trime.glue.scorer.MemoryScorer``) with the same options (``trime.settings.EvalSettings``).

The split is ``trime.hf.data.Segments`` scored in stream order, ``batch_size`` segments at a
time: each segment's own earlier tokens are local memory, a FIFO of the document's last
``long_memory_size`` scored tokens before it is long memory (``local,long``), and the datastore
of a retriever (``trime.extmem.retrieval``) is external memory (``...,ext``). Every token but
the split's first is a target once; a datastore of a split (``save_datastore``) has a row per
target, row i = the target ``stream[i + 1]`` with the key g(c) of the position before it.

    settings = EvalSettings(eval_memory="local,long", long_memory_size=4096)
    result = evaluate(model, Segments(documents, 512), settings)   # {"perplexity", "loss", "tokens"}
    save_datastore(model, Segments(train_documents, 512), "dstore")  # then trime-build-index dstore
    retriever = open_retriever(Datastore.open("dstore", Vocabulary(model)), 1024, "ip", 32)  # trime.extmem
    evaluate(model, segments, EvalSettings(eval_memory="local,long,ext", dstore="dstore"), retriever)
"""

import math
import sys

import torch

from trime.extmem.datastore import DatastoreWriter
from trime.extmem.fingerprints import dictionary_checksum, model_fingerprint, stream_checksum
from trime.glue.scorer import MemoryScorer
from trime.hf.architectures import LastFFNInput, ffn_input_dim
from trime.hf.data import collate_segments
from trime.settings import EvalSettings

PAD = -1  # padding of targets and inputs inside the scorer (never a token id)


def scorer_sample(batch) -> dict:
    """A collated batch as the scorer reads it: targets (the next tokens; padding PAD), inputs,
    each target's stream offset and document."""
    labels = batch["labels"]
    target = labels[:, 1:].masked_fill(labels[:, 1:] == -100, PAD)
    inputs = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, PAD)[:, :-1]
    # each target's datastore row (its stream offset - 1): the FIFO orders by it, a datastore of
    # this split is excluded by it
    positions = torch.arange(labels.shape[1] - 1, device=labels.device)
    return {"target": target, "net_input": {"src_tokens": inputs},
            "trime_label_offset": batch["segment_starts"][:, None] + positions[None],
            "trime_doc": batch["doc_ids"][:, 1:]}


class Vocabulary:
    """What a datastore records of a model's vocabulary (``symbols``, as a fairseq dictionary):
    the tokenizer's tokens in id order, or the ids themselves without a tokenizer."""

    def __init__(self, model, tokenizer=None):
        ids = list(range(model.config.vocab_size))
        tokens = tokenizer.convert_ids_to_tokens(ids) if tokenizer is not None else [None] * len(ids)
        self.symbols = [f"<id {i}>" if token is None else token for i, token in zip(ids, tokens)]

    def __len__(self):
        return len(self.symbols)


def _passes(model, segments, batch_size, capture, final=False):
    """(collated batch, the model's output, g(c) [B, T, d]) of every batch, in stream order."""
    device = next(model.parameters()).device
    for start in range(0, len(segments), batch_size):
        batch = collate_segments([segments[i] for i in range(start, min(start + batch_size, len(segments)))])
        batch = {name: value.to(device) for name, value in batch.items()}
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        output_hidden_states=final)
        yield batch, outputs, capture.pop(batch["input_ids"].shape)[:, :-1]


@torch.no_grad()
def save_datastore(model, segments, path: str, batch_size: int = 8, ffn_module: str = None,
                   tokenizer=None, split: str = "train") -> str:
    """A datastore of ``segments`` at ``path`` (``trime.extmem``): g(c) (fp16) and the target of
    every position, row i = target ``stream[i + 1]``; index it with ``trime-build-index``."""
    capture = LastFFNInput(model, ffn_module)
    was_training = model.training
    model.eval()
    values = segments.stream[1:]
    writer = DatastoreWriter(path, len(values), ffn_input_dim(model, capture.name), {
        "split": split, "dictionary_size": model.config.vocab_size,
        "dictionary_checksum": dictionary_checksum(Vocabulary(model, tokenizer)),
        "model_fingerprint": model_fingerprint(model),
        "tokens_per_sample": segments.length, "command": " ".join(sys.argv)})
    try:
        for batch, _, g in _passes(model, segments, batch_size, capture):
            sample = scorer_sample(batch)
            scored = sample["target"] != PAD
            writer.add(sample["trime_label_offset"][scored], g[scored], sample["target"][scored])
    finally:
        capture.remove()
        model.train(was_training)
    if not writer.complete:
        raise RuntimeError(f"the datastore {path} did not receive every row")
    return path


@torch.no_grad()
def evaluate(model, segments, settings: EvalSettings, retriever=None, batch_size: int = 8,
             ffn_module: str = None) -> dict:
    """{"loss" (bits per token), "perplexity", "tokens"} of every target of ``segments`` under
    ``settings``; ``retriever``: the external memory's search (``...,ext``). A datastore of this
    very split (``save_datastore``) is recognised: no token retrieves its own entry."""
    if settings.save_dstore:
        raise ValueError("evaluate does not save datastores: use trime.hf.evaluation.save_datastore")
    own = retriever is not None and \
        retriever.datastore.meta.get("values_checksum") == stream_checksum(segments.stream[1:])
    scorer = MemoryScorer(settings, None, PAD, retriever, exclude_own_tokens=own)
    capture = LastFFNInput(model, ffn_module)
    needs_final = settings.uses_cache and settings.cache_key == "final"
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        for batch, outputs, g in _passes(model, segments, batch_size, capture, needs_final):
            extra = {"trime_query": g}
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
