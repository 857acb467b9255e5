"""Kernel backends of the memory log-sum-exp (``trime.core.memory_lse``): one file per backend
(``triton_memory_lse``: the fused Triton kernel) and ``dispatch``, which picks one and says why
another was refused. The chunked op in ``trime.core.memory_lse`` is the reference and the CPU
default."""
