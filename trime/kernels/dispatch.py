"""Which backend computes the memory log-sum-exp (``--memory-kernel {auto,chunked,fused}``).

- ``chunked``: ``trime.core.memory_lse``'s op (any device, any rule, top-k; the reference);
- ``fused``: the Triton kernel (``trime.kernels.triton_memory_lse``) — CUDA tensors, or CPU
  tensors under Triton's interpreter (``TRITON_INTERPRET=1``, for tests); refused, with the
  reason, where it cannot run;
- ``auto``: fused where it can run on CUDA, chunked otherwise.
"""

import functools
import logging
import os

KERNELS = ("auto", "chunked", "fused")
logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def _triton_missing():
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed (pip install triton; CUDA builds of torch include it)"
    return None


def fused_refusal(queries, keys, visibility, top_k):
    """Why the fused kernel cannot compute this call (a sentence), or None when it can."""
    if top_k is not None:
        return "a top-k memory (--memory-topk) is kept by the chunked op only"
    if queries.device != keys.device:
        return "queries and keys are on different devices"
    if queries.device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        return (f"its tensors are on {queries.device.type}: the kernel runs on CUDA (or on CPU "
                "in Triton's interpreter, TRITON_INTERPRET=1, for tests)")
    missing = _triton_missing()
    if missing:
        return missing
    if max(queries.numel(), keys.numel()) >= 2 ** 31:
        return "more than 2^31 elements in the queries or keys (32-bit offsets)"
    token_visibility = visibility.token_visibility(queries.shape[1])
    if isinstance(token_visibility, str):
        return token_visibility
    return None


_said = set()


def choose(kernel, queries, keys, visibility, top_k):
    """("chunked" or "fused", the rule as TokenVisibility for fused)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown memory kernel {kernel!r}: choose one of {', '.join(KERNELS)}")
    if kernel == "chunked" or (kernel == "auto" and queries.device.type != "cuda"):
        return "chunked", None
    refusal = fused_refusal(queries, keys, visibility, top_k)
    if refusal is None:
        return "fused", visibility.token_visibility(queries.shape[1])
    if kernel == "fused":
        raise ValueError(f"--memory-kernel fused cannot run here: {refusal}; use "
                         "--memory-kernel chunked (or auto)")
    if queries.device.type == "cuda" and refusal not in _said:  # say once why auto fell back
        _said.add(refusal)
        logger.info(f"TRIME: memory kernel auto -> chunked: {refusal}")
    return "chunked", None
