"""Training-step time of the TRIME loss against the plain LM loss on the same model and batches,
measured in one process (``trime-repro hf-wikitext2`` records it; the ratio is what to read, the
seconds depend on the machine)."""

import statistics
import time

import torch

from trime.hf.data import BM25Batches, collate_segments
from trime.hf.loss import TrimeLoss


def step_seconds(make_model, segments, batch_size: int, memories=("none", "local", "ext"), steps: int = 6,
                 warmup: int = 2, bm25_k: int = 20, seed: int = 1) -> dict:
    """Median seconds of one optimiser step (forward, loss, backward, Adam) for each memory, on
    the same ``steps`` batches (ext: BM25 batches, as it trains; the others: the same number of
    segments in corpus order), the memories taken in turn at every step so that they share the
    machine's state; the first ``warmup`` steps are not counted. ``make_model()``: a fresh model,
    the same for every memory. Returns {memory: seconds} and ratios to memory "none"."""
    plain = [list(range(i * batch_size, (i + 1) * batch_size)) for i in range(steps + warmup)]
    bm25 = list(BM25Batches(segments, batch_size, bm25_k, seed=seed))[:steps + warmup] if "ext" in memories else []
    runs = {}
    for memory in memories:
        torch.manual_seed(seed)
        model = make_model()
        model.train()
        runs[memory] = (model, TrimeLoss(model, memory, ce_warmup_steps=0), torch.optim.Adam(model.parameters()))
    seconds = {memory: [] for memory in memories}
    for step in range(steps + warmup):
        for memory, (model, loss, optimizer) in runs.items():
            rows = (bm25 if memory == "ext" else plain)[step]
            batch = collate_segments([segments[i] for i in rows if i < len(segments)])
            start = time.perf_counter()
            loss(**batch, step=step).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step >= warmup:
                seconds[memory].append(time.perf_counter() - start)
    for _, loss, _ in runs.values():
        loss.remove()
    median = {memory: statistics.median(values) for memory, values in seconds.items()}
    return {"seconds_per_step": median, "steps": steps, "batch_size": batch_size,
            "ratio_to_plain": {m: median[m] / median["none"] for m in memories} if "none" in median else {}}
