"""fairseq's side of cross-worker memory (``--memory-across-workers``; the math and the gather
are ``trime.core.distributed``): which processes are the data-parallel workers, and the batch key
that marks fairseq's filler batch."""

import torch.distributed as dist

# batch key set by the task's train_step: fairseq's filler batch at the end of an epoch, whose
# loss fairseq zeroes; it must still join the all-gather, but adds no memory rows
DUMMY_BATCH = "trime_dummy_batch"


def data_parallel_world():
    """(group, world size, rank) of the data-parallel workers; world size 1 when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return None, 1, 0
    try:
        from fairseq.distributed import utils as distributed_utils
        group = distributed_utils.get_data_parallel_group()
        return group, distributed_utils.get_world_size(group), distributed_utils.get_rank(group)
    except Exception:  # plain torch.distributed without fairseq's groups
        return None, dist.get_world_size(), dist.get_rank()
