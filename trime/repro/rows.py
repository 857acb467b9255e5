"""What every reproduced table is made of: the ``Table`` entry, and a row's memory options and
tuning (on dev, then scored on test), shared by the WikiText-2-sized and the paper-scale tables."""

from dataclasses import dataclass
from typing import Callable, Optional


def segments_per_update(budget) -> str:
    return f"{budget.batch_size} × {budget.tokens_per_sample}"


@dataclass(frozen=True)
class Table:
    """One table of the paper as ``trime-repro NAME`` reproduces it.

    rows: Recipes -> rows (runs, or skips when done, every step the rows need);
    render: rows -> markdown lines of table.md; plot: (rows, png path) -> whether one was drawn;
    batch: Budget -> the tokens of one update, as table.md's first line states them.
    """

    name: str
    rows: Callable
    render: Callable
    plot: Optional[Callable] = None
    batch: Callable = segments_per_update


def memory_options(recipes, memory, dstore=None, sim=None, long_memory_size=None):
    """--task trime_lm options for an evaluation memory (``long_memory_size``: the budget's S
    unless given)."""
    options = ["--eval-memory", memory]
    if "long" in memory:
        options += ["--long-memory-size", long_memory_size or recipes.budget.long_memory_size]
    if "ext" in memory:
        options += ["--dstore", dstore, *recipes.budget.knn] + (["--knn-sim", sim] if sim else [])
    return [str(o) for o in options]


def plain_row(recipes, row, checkpoint):
    """The LM alone on dev and test (no memory, no tuning)."""
    return {"options": [], **{split: recipes.evaluate(row, checkpoint, split, [])
                              for split in ("valid", "test")}}


def tuned_text(row) -> str:
    """A row's values tuned on dev, as table.md shows them: '--memory-temp 1.1 --knn-lambda 0.3'."""
    return " ".join(f"{k} {v:g}" for k, v in row.get("tuned_on_dev", {}).items())


def tuned_row(recipes, row, checkpoint, scoring, memory_options, test=True):
    """Tune on dev (trime-tune's best point is the dev perplexity: its grid points equal
    fairseq-eval-lm at those values, tested), then score test with fairseq-eval-lm there."""
    best = recipes.tune(row, checkpoint, scoring, memory_options)
    options = [*memory_options, "--eval-scoring", scoring, *recipes.options_of(best)]
    result = {"options": options, "tuned_on_dev": best["options"], "grids": best["grids"],
              "optimum_on_grid_edge": best["on_edge"], "valid": best["best"]["perplexity"]}
    if test:
        result["test"] = recipes.evaluate(row, checkpoint, "test", options)
    return result
