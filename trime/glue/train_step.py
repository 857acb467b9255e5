"""What fairseq's ``train_step`` does not tell a criterion, told by trime's tasks.

fairseq passes a criterion neither the update number (the CE warm-up and the local-drop
draw need it) nor whether a batch is the filler that ends an epoch (``ignore_grad``: its
loss is zeroed, but it must still join a cross-worker all-gather). Both tasks call this first.
"""

from trime.glue.distributed import DUMMY_BATCH


def tell_criterion(sample, criterion, update_num, ignore_grad):
    if hasattr(criterion, "set_num_updates"):  # a criterion without the hook ignores it
        criterion.set_num_updates(update_num)
    sample[DUMMY_BATCH] = bool(ignore_grad)
