"""Cross-worker in-batch memory (paper §4.2/§4.3 on several GPUs; fairseq's
``--memory-across-workers``, ``trime.hf``'s ``memory_across_workers``), on plain torch.distributed.

Every data-parallel worker gathers the memory keys, labels and positions of all
workers, so its loss sees the whole global batch as memory. The keys are
gathered with the differentiable ``torch.distributed.nn.functional.all_gather``:
in backward each worker receives the sum over all workers' losses of the
gradient of its own keys, so the summed parameter gradients equal those of one
process holding the global batch (the authors' code passed gradient only
through each worker's own slice).

Batches of different sizes are padded to the largest one (padded rows are never
visible). A worker on a dummy batch (fairseq's filler at the end of an epoch)
contributes no rows.
"""

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn

import torch.nn.functional as F

from trime.core.objective import BatchMemory, batch_memory_logsumexp

NO_SEGMENT = torch.iinfo(torch.int64).max  # corpus offset of a padded row: sorts last


def _pad(x, rows, cols, value):
    out = x.new_full((rows, cols, *x.shape[2:]), value)
    out[:x.shape[0], :x.shape[1]] = x
    return out


def gather_batch_memory(keys, labels, key_valid, doc_ids, segment_starts, contribute=True,
                        group=None) -> BatchMemory:
    """The global batch as memory for this worker's queries.

    Args:
        keys [B, T, d] (differentiable), labels / key_valid / doc_ids [B, T],
        segment_starts [B]: this worker's batch.
        contribute: False on a dummy batch (its rows are left out of the memory).
        group: the data-parallel process group (None: every process).
    Returns:
        BatchMemory over [W·Bmax, Tmax] rows; ``own_rows`` are this worker's rows
        (empty when not contributing). Every worker must call this together.
    """
    world_size, rank = dist.get_world_size(group), dist.get_rank(group)
    B, T = labels.shape
    sent = B if contribute else 0
    sizes = torch.tensor([sent, T], dtype=torch.int64, device=labels.device)
    all_sizes = [torch.empty_like(sizes) for _ in range(world_size)]
    dist.all_gather(all_sizes, sizes, group=group)
    rows = max(int(s[0]) for s in all_sizes)
    cols = max(int(s[1]) for s in all_sizes)
    rows = max(rows, 1)  # keep every tensor non-empty

    def padded(x, value):
        x = x[:sent]
        return _pad(x, rows, cols, value) if x.dim() > 1 else torch.cat(
            [x, x.new_full((rows - x.shape[0],), value)])

    local = dict(labels=padded(labels, 0), key_valid=padded(key_valid, False),
                 doc_ids=padded(doc_ids, -1), segment_starts=padded(segment_starts, NO_SEGMENT))
    gathered = {}
    for name, tensor in local.items():
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        gathered[name] = torch.cat(parts)
    gathered_keys = torch.cat(dist_nn.all_gather(padded(keys, 0.0), group=group))
    own_rows = rank * rows + torch.arange(sent, device=labels.device)
    return BatchMemory(gathered_keys, gathered["labels"], gathered["key_valid"], gathered["doc_ids"],
                       gathered["segment_starts"], own_rows)


def across_workers_logsumexp(rule, queries, labels, targets, key_valid, chunk_size, doc_ids,
                             segment_starts, pad_index, dummy_batch=False, group=None, **options):
    """``batch_memory_logsumexp`` with the whole global batch as memory (every worker of
    ``group`` calls it together). ``options``: keep_local, detach_keys, temperature, top_k,
    kernel, as there. A dummy batch (fairseq's end-of-epoch filler) adds no memory rows and still
    joins the all-gather's backward (its loss is zeroed by the caller). Returns (lse_all, lse_pos)
    fp32 [B, T] for this worker's batch."""
    keys = queries.detach() if options.get("detach_keys") else queries  # no gather backward then
    memory = gather_batch_memory(keys, labels, key_valid, doc_ids, segment_starts,
                                 contribute=not dummy_batch, group=group)
    if dummy_batch:
        lse_all, lse_pos = batch_memory_logsumexp(rule, queries, labels, targets, key_valid,
                                                  chunk_size, doc_ids, segment_starts, **options)
        return lse_all + 0.0 * memory.keys.sum(), lse_pos
    T, width = targets.shape[1], memory.labels.shape[1]  # rows padded to the step's longest
    cols = (0, width - T)
    lse_all, lse_pos = batch_memory_logsumexp(
        rule, F.pad(queries, (0, 0) + cols), F.pad(labels, cols, value=pad_index),
        F.pad(targets, cols, value=pad_index), F.pad(key_valid, cols, value=False), chunk_size,
        memory=memory, **options)
    return lse_all[:, :T], lse_pos[:, :T]
