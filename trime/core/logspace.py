"""Log-space helpers shared by the memory op, the evaluation mixtures and the statistics."""

import torch

NEG_INF = float("-inf")


def finite_or_zero(values: torch.Tensor) -> torch.Tensor:
    """values where finite, else 0 (a safe shift for an empty log-sum-exp)."""
    return torch.where(torch.isfinite(values), values, torch.zeros_like(values))


def log_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """log(numerator / denominator) in log space; -inf (no memory) where the set is empty."""
    return torch.where(torch.isfinite(denominator), numerator - finite_or_zero(denominator),
                       torch.full_like(numerator, NEG_INF))
