"""The paper's headline tables at paper scale (``trime-repro table2 ... table5``): their rows, as
``trime.repro.rows.Table`` entries run by ``trime.repro.paper_recipes.PaperRecipes``.

Every row is the paper's model and memory; values (τ, λ, τ′, the cache's λ_c, θ) are tuned on
dev with trime-tune, then test is scored with fairseq-eval-lm at them. Table 4 is in bits per
byte (log2 of the per-byte perplexity); Table 5 scores Table 2's models on BooksCorpus.
"""

import math

from trime.repro.rows import (Table, memory_options, plain_row, segments_per_update, tuned_row,
                              tuned_text)

# paper Tables 2-5: row -> (dev, test)
PAPER_TABLE2 = {"Transformer": (18.04, 18.70), "+ continuous cache": (17.65, 18.26),
                "TrimeLM": (17.10, 17.76), "TrimeLM_long": (17.01, 17.64),
                "kNN-LM": (16.40, 16.37), "kNN-LM + continuous cache": (16.23, 16.23),
                "TrimeLM_ext (w/o M_long)": (15.62, 15.55), "TrimeLM_ext": (15.51, 15.41),
                "kNN-LM †": (16.06, 16.12), "kNN-LM + continuous cache †": (15.81, 15.79),
                "TrimeLM_ext †": (15.40, 15.37)}
PAPER_TABLE3 = {"Transformer": (25.31, 25.87), "+ continuous cache*": (22.95, 23.59),
                "TrimeLM": (24.45, 25.60), "TrimeLM_long": (21.76, 22.66)}
PAPER_TABLE4 = {"Transformer": (1.18, 1.16), "+ continuous cache*": (1.16, 1.17),
                "TrimeLM": (1.14, 1.12), "TrimeLM_long": (1.08, 1.05)}
PAPER_TABLE5 = {"Transformer": (62.72, 53.98), "TrimeLM": (59.39, 49.25),
                "TrimeLM_long": (49.21, 39.50), "kNN-LM + continuous cache (Wiki)": (53.27, 43.24),
                "TrimeLM_ext (Wiki)": (47.00, 37.70), "kNN-LM + continuous cache (Books)": (42.12, 32.87),
                "TrimeLM_ext (Books)": (36.97, 27.84)}
# the paper-scale tables that also run with the CPU presets: Table 4 on bytes (--preset bytes, e.g.
# the Gutenberg books by trime-prepare-enwik8 --books); Table 5 with Table 10's models (--preset cpu)
# on books (e.g. the Gutenberg selection) binarised with WikiText-2's dictionary
CPU_ANALOGS = ("table4", "table5")
PAPER_VALUES = {"table2": PAPER_TABLE2, "table3": PAPER_TABLE3, "table4": PAPER_TABLE4,
                "table5": PAPER_TABLE5}
TRAINED = {"table2": ("vanilla", "trime", "trime_long", "trime_ext"),
           "table3": ("vanilla", "trime", "trime_long"), "table4": ("vanilla", "trime", "trime_long")}


def _with_paper(table, rows):
    for name, row in rows.items():
        row["paper_dev"], row["paper_test"] = PAPER_VALUES[table][name]
        if table == "table4":  # bits per byte: log2 of the per-byte perplexity
            row["valid_bpc"], row["test_bpc"] = (math.log2(row[s]) if row[s] > 0 else math.nan
                                                 for s in ("valid", "test"))
    return rows


def _lm_rows(recipes, prefix, models, cache_memory):
    """Transformer, + continuous cache (over ``cache_memory``), TrimeLM (local memory),
    TrimeLM_long (local + long memory of the table's S)."""
    rows = {"Transformer": plain_row(recipes, f"{prefix}-transformer", models["vanilla"])}
    cache = "+ continuous cache" + ("*" if "long" in cache_memory else "")
    rows[cache] = tuned_row(recipes, f"{prefix}-cache", models["vanilla"], "cache",
                            memory_options(recipes, cache_memory))
    rows["TrimeLM"] = tuned_row(recipes, f"{prefix}-trimelm", models["trime"], "trime",
                                memory_options(recipes, "local"))
    rows["TrimeLM_long"] = tuned_row(recipes, f"{prefix}-trimelm-long", models["trime_long"], "trime",
                                     memory_options(recipes, "local,long"))
    return rows


def _trained(recipes, table):
    recipes.preprocess()
    names = TRAINED[table]
    return dict(zip(names, recipes.checkpoints([dict(model=name) for name in names])))


def table2(recipes):
    """Table 2 (247M, L = 3,072): the LM rows, kNN-LM (+ cache) on the vanilla model's l2
    datastore, TrimeLM_ext with and without long memory on its ip datastore, and the † rows with
    exact distances from the stored keys instead of the IVFPQ codes."""
    models = _trained(recipes, "table2")
    rows = _lm_rows(recipes, "table2", models, "local")
    vanilla_dstore = recipes.datastore(models["vanilla"], "l2")
    ext_dstore = recipes.datastore(models["trime_ext"], "ip")
    for exact in ("", " †"):
        extra = ["--knn-exact-scores"] if exact else []
        tag = "-exact" if exact else ""
        rows["kNN-LM" + exact] = tuned_row(recipes, f"table2-knnlm{tag}", models["vanilla"], "knnlm", [
            *memory_options(recipes, "ext", vanilla_dstore, "l2"), *extra])
        rows["kNN-LM + continuous cache" + exact] = tuned_row(
            recipes, f"table2-knnlm-cache{tag}", models["vanilla"], "knnlm",
            [*memory_options(recipes, "local,ext", vanilla_dstore, "l2"), *extra])
        if not exact:
            rows["TrimeLM_ext (w/o M_long)"] = tuned_row(
                recipes, "table2-trimelm-ext-local", models["trime_ext"], "trime",
                memory_options(recipes, "local,ext", ext_dstore))
        rows["TrimeLM_ext" + exact] = tuned_row(
            recipes, f"table2-trimelm-ext{tag}", models["trime_ext"], "trime",
            [*memory_options(recipes, "local,long,ext", ext_dstore), *extra])
    return _with_paper("table2", {name: rows[name] for name in PAPER_TABLE2})


def table3(recipes):
    """Table 3 (150M, L = 150): Transformer, + cache adapted to long-term memory, TrimeLM,
    TrimeLM_long with 15,000 tokens of long memory."""
    return _with_paper("table3", _lm_rows(recipes, "table3", _trained(recipes, "table3"), "local,long"))


def table4(recipes):
    """Table 4 (enwik8, 38M, L = 512; bits per byte): as Table 3, long memory 24,576 bytes. The CPU
    analog (--preset bytes) chooses TrimeLM_long's long memory S on dev among the budget's sizes
    up to 24,576 (trime-memory-curve at its tuned τ), then scores test there."""
    models = _trained(recipes, "table4")
    rows = _lm_rows(recipes, "table4", models, "local,long")
    if not recipes.budget.paper:
        rows["TrimeLM_long"] = _long_memory_chosen_on_dev(recipes, "table4-trimelm-long",
                                                          models["trime_long"], rows["TrimeLM_long"])
    return _with_paper("table4", rows)


def _long_memory_chosen_on_dev(recipes, row, checkpoint, tuned):
    """A TRIME row at the long-memory size S with the best dev perplexity (its τ tuned at the
    budget's S), scored on test there; the dev curve beside."""
    tau = [str(a) for option, value in tuned["tuned_on_dev"].items() for a in (option, value)]
    curve = recipes.memory_curve(checkpoint, "trime", tau)
    best = recipes.budget.long_memory_size if recipes.runner.dry_run else min(curve, key=curve.get)
    memory = memory_options(recipes, "local,long", long_memory_size=best) if best else \
        memory_options(recipes, "local")
    options = [*memory, "--eval-scoring", "trime", *tau]
    return dict(tuned, options=options, long_memory_size=best, dev_by_size=curve,
                valid=curve.get(best), test=recipes.evaluate(f"{row}-S{best}", checkpoint, "test", options))


def table5(recipes):
    """Table 5 (domain adaptation): Table 2's models scored on BooksCorpus without retraining;
    kNN-LM + cache and TrimeLM_ext with a WikiText-103 datastore and with a BooksCorpus one (its
    train split through each model); long memory 49,152 for TrimeLM_long, TrimeLM_ext and the
    cache (the budget's S); tuned on the books' dev, scored on their test."""
    models = _trained(recipes, "table2")
    books = recipes.books()
    # the budget's S: the paper's 49,152 at paper scale; the CPU preset keeps Table 10's 12,288 (at
    # 49,152 a 4,096-token batch takes 35-40 s on 2 cores, about 6 h for the table)
    long = recipes.budget.long_memory_size
    rows = {"Transformer": plain_row(books, "table5-transformer", models["vanilla"]),
            "TrimeLM": tuned_row(books, "table5-trimelm", models["trime"], "trime",
                                 memory_options(books, "local")),
            "TrimeLM_long": tuned_row(books, "table5-trimelm-long", models["trime_long"], "trime",
                                      memory_options(books, "local,long", long_memory_size=long))}
    for corpus, source in (("Wiki", recipes), ("Books", books)):
        vanilla_dstore = source.datastore(models["vanilla"], "l2")
        ext_dstore = source.datastore(models["trime_ext"], "ip")
        rows[f"kNN-LM + continuous cache ({corpus})"] = tuned_row(
            books, f"table5-knnlm-cache-{corpus.lower()}", models["vanilla"], "knnlm",
            memory_options(books, "local,long,ext", vanilla_dstore, "l2", long_memory_size=long))
        rows[f"TrimeLM_ext ({corpus})"] = tuned_row(
            books, f"table5-trimelm-ext-{corpus.lower()}", models["trime_ext"], "trime",
            memory_options(books, "local,long,ext", ext_dstore, long_memory_size=long))
    return _with_paper("table5", rows)


def render(rows):
    bpc = any("valid_bpc" in row for row in rows.values())
    unit = "bpc" if bpc else "ppl"
    lines = [f"| model | dev {unit} | test {unit} | paper dev | paper test | tuned on dev |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        dev, test = (row["valid_bpc"], row["test_bpc"]) if bpc else (row["valid"], row["test"])
        lines.append(f"| {name} | {dev:.{3 if bpc else 2}f} | {test:.{3 if bpc else 2}f} | "
                     f"{row['paper_dev']} | {row['paper_test']} | {tuned_text(row)} |")
    return lines


def tokens_per_update(budget) -> str:
    from trime.repro.paper import PAPER_MODELS, batch_for_gpus

    if not budget.paper:  # a CPU analog (Table 5 with Table 10's models)
        return segments_per_update(budget)
    per_gpu, update_freq = batch_for_gpus(PAPER_MODELS[budget.paper], budget.gpus)
    return (f"{budget.gpus} GPU(s) × {per_gpu} × update-freq {update_freq} × "
            f"{budget.tokens_per_sample}")


PAPER_SCALE_TABLES = tuple(Table(name, rows, render, batch=tokens_per_update) for name, rows in (
    ("table2", table2), ("table3", table3), ("table4", table4), ("table5", table5)))
