"""The grid-edge rule shared by trime-tune, trime-mt-tune and trime-repro (trime.core.grids)."""

import pytest

from trime.core.grids import edge_of, edge_warning, grid_edges, widened


@pytest.mark.parametrize("values, best, kind, side", [
    ([1, 2, 4, 8, 16], 16, "scale", "high"),
    ([1, 2, 4, 8, 16], 1, "scale", "low"),
    ([1, 2, 4, 8, 16], 4, "scale", ""),
    ([4], 4, "scale", ""),                      # one value: nothing was searched
    ([0, 0.1, 0.3], 0, "weight", ""),           # λ = 0 (no memory) is a bound, not an edge
    ([0.05, 0.1, 0.3], 0.05, "weight", "low"),
    ([0, 0.1, 0.3], 0.3, "weight", "high"),
    ([1, 8, 16], 1, "count", ""),               # k = 1 cannot go lower
    ([4, 8], 4, "count", "low"),
    ([4, 8], 8, "count", "high"),
])
def test_edge_of(values, best, kind, side):
    assert edge_of(values, best, kind) == side


def test_widened_goes_past_the_edge_it_was_asked_for():
    assert widened([1, 2, 4], "high", "scale") == [1, 2, 4, 8, 16]
    assert widened([1, 2, 4], "low", "scale") == [0.25, 0.5, 1, 2, 4]
    assert widened([0.1, 0.5], "high", "weight") == [0.1, 0.5, 0.75, 0.875]
    assert max(widened([0.1, 0.9], "high", "weight")) < 1
    assert widened([0.1, 0.5], "low", "weight") == [0.025, 0.05, 0.1, 0.5]
    assert widened([8, 16], "high", "count") == [8, 16, 32, 64]
    assert widened([4, 8], "low", "count") == [1, 2, 4, 8]


def test_grid_edges_and_the_warning_name_the_option_and_wider_values():
    grids = {"taus": ([1, 2, 4], "scale"), "lambdas": ([0, 0.2, 0.4], "weight")}
    assert grid_edges(grids, {"taus": 4, "lambdas": 0.2}) == [("taus", "high")]
    assert grid_edges(grids, {"taus": 2, "lambdas": 0}) == []
    message = edge_warning("--interp-temps", [1, 2, 4, 8, 16], 16, "high", "scale")
    assert "best --interp-temps 16 is the largest value" in message
    assert message.endswith("--interp-temps 1,2,4,8,16,32,64")
    with pytest.raises(ValueError, match="kind"):
        edge_of([1, 2], 1, "temperature")


def test_trime_tune_edges_skip_a_temperature_whose_weight_is_zero():
    from trime.core.grids import edges_of

    best = {"tau": 1.0, "lambda": 0.0, "interp_temp": 16.0, "cache_lambda": None, "cache_theta": None}
    grids = {"taus": [0.5, 1, 2], "lambdas": [0, 0.1], "interp_temps": [1, 4, 16]}
    assert edges_of(grids, best) == []  # λ = 0: τ' is unused, its edge means nothing
    assert edges_of(grids, dict(best, **{"lambda": 0.1})) == [("lambdas", "high"),
                                                                ("interp_temps", "high")]
