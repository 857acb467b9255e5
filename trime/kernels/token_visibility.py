"""A visibility rule as per-token ids (``TokenVisibility``): what a fused kernel reads to decide
inside its blocks which keys each query sees. ``trime.core.visibility``'s rules build it
(``token_visibility``); this package imports nothing of ``trime.core``, so the two import in one
direction (core -> kernels)."""

from dataclasses import dataclass

import torch

LOCAL, LONG, EXT = 0, 1, 2  # TokenVisibility.mode


@dataclass
class TokenVisibility:
    """A rule as per-token ids, for a fused kernel that decides visibility inside its blocks.

    Key j is visible to a query at key-axis position p with id q_id (``query_positions``,
    ``query_ids`` [G, Nq]; ``key_ids``, ``key_valid`` [G, Nk]) iff key_valid[j] and

    - ``local``: j < p (ids unused);
    - ``long``:  j < p and key_ids[j] == q_id (ids = documents);
    - ``ext``:   key_ids[j] != q_id, or ``keep_local`` and j < p (ids = segments).

    ``key_starts`` [G, Nk] (long: the first position of j's document run) bound the key span a
    block of queries can see (``key_spans``).
    """

    mode: int  # LOCAL, LONG or EXT
    key_valid: torch.Tensor
    key_ids: torch.Tensor
    query_positions: torch.Tensor
    query_ids: torch.Tensor
    keep_local: bool = True
    key_starts: torch.Tensor = None

    def key_spans(self, block: int) -> torch.Tensor:
        """int64 [G, ceil(Nq / block), 2]: for each block of ``block`` queries, the key span
        [lo, hi) outside which none of them sees a key (hi <= lo: the block sees nothing)."""
        G, Nq = self.query_positions.shape
        num_blocks = -(-Nq // block)
        pad = num_blocks * block - Nq
        positions = torch.nn.functional.pad(self.query_positions, (0, pad), value=-1)
        hi = positions.view(G, num_blocks, block).amax(-1).clamp(min=0)  # keys before the last
        if self.mode == EXT:
            hi = torch.full_like(hi, self.key_valid.shape[1])
        if self.mode == LONG:
            starts = self.key_starts.gather(1, self.query_positions.clamp(min=0))
            big = torch.iinfo(starts.dtype).max
            lo = torch.nn.functional.pad(starts, (0, pad), value=big).view(G, num_blocks, block)
            lo = lo.amin(-1)
        else:
            lo = torch.zeros_like(hi)
        return torch.stack([lo, torch.maximum(lo, hi)], -1)
