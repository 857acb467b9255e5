"""Loading fairseq 0.12 checkpoints with torch >= 2.6.

torch 2.6 made ``torch.load(weights_only=True)`` the default; fairseq 0.12's
``checkpoint_utils.load_checkpoint_to_cpu`` calls ``torch.load`` without the argument, and
checkpoints of legacy-args architectures (``transformer``, ``transformer_iwslt_de_en``, the
authors' fairseq 0.9/0.10 models) store an ``argparse.Namespace`` in ``cfg.model`` / ``args``,
which the weights-only unpickler refuses; and a checkpoint saved with ``--eval-bleu`` keeps
the BLEU meters' n-gram counts as numpy arrays in ``extra_state``. We allow-list exactly
those classes (Namespace, numpy arrays of the numeric dtypes), never switching
``weights_only`` off: data, not code, stays all a checkpoint may contain.
"""

import argparse

import numpy as np
import torch

NUMPY_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "float16", "float32", "float64")


def _numpy_array_globals():
    """What unpickling a numpy array of a numeric dtype needs: its reconstructor, ndarray and dtype."""
    reconstruct = np.zeros(1).__reduce__()[0]
    return [reconstruct, np.ndarray, np.dtype, *{type(np.dtype(name)) for name in NUMPY_DTYPES}]


def allow_namespace_in_checkpoints() -> bool:
    """Add ``argparse.Namespace`` and numpy arrays to torch's weights-only safe globals (a no-op on torch
    versions without them). Returns whether it was added."""
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is None:  # torch < 2.4: torch.load does not default to weights_only
        return False
    add_safe_globals([argparse.Namespace, *_numpy_array_globals()])
    return True
