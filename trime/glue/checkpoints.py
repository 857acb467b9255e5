"""Loading fairseq 0.12 checkpoints with torch >= 2.6.

torch 2.6 made ``torch.load(weights_only=True)`` the default; fairseq 0.12's
``checkpoint_utils.load_checkpoint_to_cpu`` calls ``torch.load`` without the argument, and
checkpoints of legacy-args architectures (``transformer``, ``transformer_iwslt_de_en``, the
authors' fairseq 0.9/0.10 models) store an ``argparse.Namespace`` in ``cfg.model`` / ``args``,
which the weights-only unpickler refuses. We allow-list exactly that class, never switching
``weights_only`` off: tensors, dicts, lists and Namespaces stay the only things a checkpoint
may contain.
"""

import argparse

import torch


def allow_namespace_in_checkpoints() -> bool:
    """Add ``argparse.Namespace`` to torch's weights-only safe globals (a no-op on torch
    versions without them). Returns whether it was added."""
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is None:  # torch < 2.4: torch.load does not default to weights_only
        return False
    add_safe_globals([argparse.Namespace])
    return True
