"""Tuning grids: whether an optimum sits on a grid's edge, and how to widen the grid past it.

An optimum on the edge of a grid may lie beyond it. ``trime-tune`` and ``trime-mt-tune`` warn
(with the values to add), and ``trime-repro`` widens temperature grids and tunes again; all
three ask ``edges_of`` and ``widened``. What an edge is depends on what the grid holds:

- ``scale`` (temperatures τ, τ′, T; the cache's θ): any value > 0; widened by factors of 2 and 4;
- ``weight`` (λ, λ_c in [0, 1)): 0 is not an edge (no memory is a point of its own, not a
  bound to push); widened halfway towards 0 or 1;
- ``count`` (k, entries retrieved): an integer ≥ 1; 1 is not an edge; widened by factors of 2 and 4.
"""

from typing import Dict, List, Sequence, Tuple

KINDS = ("scale", "weight", "count")
# the grids of trime-tune (LM) and trime-mt-tune (MT): {option name: (the key of its value in a
# row of tune.csv, its kind, the weight whose 0 leaves it unused)}; trime-repro widens "scale" ones
LM_GRIDS = {"taus": ("tau", "scale", None), "interp_temps": ("interp_temp", "scale", "lambda"),
            "lambdas": ("lambda", "weight", None), "cache_lambdas": ("cache_lambda", "weight", None),
            "cache_thetas": ("cache_theta", "scale", "cache_lambda")}
MT_GRIDS = {"knn_ks": ("knn_k", "count", None), "taus": ("memory_temp", "scale", None),
            "lambdas": ("knn_lambda", "weight", None), "interp_temps": ("knn_temp", "scale", "knn_lambda")}


def edge_of(values: Sequence[float], best: float, kind: str) -> str:
    """'low', 'high' or '' (inside, or a grid of one value, or a natural bound)."""
    if kind not in KINDS:
        raise ValueError(f"grid kind must be one of {KINDS}, got {kind!r}")
    values = sorted(set(values))
    if len(values) < 2 or best is None:
        return ""
    if best == values[0]:
        natural_bound = (kind == "weight" and best == 0) or (kind == "count" and best <= 1)
        return "" if natural_bound else "low"
    return "high" if best == values[-1] else ""


def widened(values: Sequence[float], side: str, kind: str) -> List[float]:
    """``values`` with two more past the ``side`` edge (sorted, distinct)."""
    values = sorted(set(values))
    low, high = values[0], values[-1]
    if kind == "weight":
        extra = {low / 2, low / 4} if side == "low" else {high + (1 - high) / 2,
                                                          high + 3 * (1 - high) / 4}
        extra = {round(v, 4) for v in extra}
    elif kind == "count":
        extra = {max(1, int(low) // 2), max(1, int(low) // 4)} if side == "low" \
            else {int(high) * 2, int(high) * 4}
    else:
        extra = {low / 2, low / 4} if side == "low" else {high * 2, high * 4}
    return sorted(set(values) | extra)


def grid_edges(grids: Dict[str, Tuple[Sequence[float], str]], best: Dict[str, float]
               ) -> List[Tuple[str, str]]:
    """[(grid name, 'low' | 'high')] for each grid {name: (values, kind)} whose best value
    ``best[name]`` sits on an edge."""
    edges = []
    for name, (values, kind) in grids.items():
        side = edge_of(values, best.get(name), kind)
        if side:
            edges.append((name, side))
    return edges


def edge_warning(option: str, values: Sequence[float], best: float, side: str, kind: str) -> str:
    """One line for the user: where the optimum is, and the option that widens the grid."""
    wider = ",".join(f"{v:g}" for v in widened(values, side, kind))
    where = "smallest" if side == "low" else "largest"
    return (f"the best {option} {best:g} is the {where} value of the grid: the optimum may lie "
            f"beyond it; widen the grid, e.g. {option} {wider}")


def edges_of(grids: Dict[str, Sequence[float]], best: Dict[str, float], kinds=LM_GRIDS
             ) -> List[Tuple[str, str]]:
    """[(option name, 'low' | 'high')] of the grids {option name: values} (described by
    ``kinds``: ``LM_GRIDS`` or ``MT_GRIDS``) whose value in the ``best`` row sits on an edge. A
    temperature is unused where its weight is 0 (λ = 0: no memory distribution): no edge there."""
    used = {name: values for name, values in grids.items() if best.get(kinds[name][0]) is not None
            and not (kinds[name][2] and best.get(kinds[name][2]) == 0)}
    return grid_edges({name: (values, kinds[name][1]) for name, values in used.items()},
                      {name: best[kinds[name][0]] for name in used})
