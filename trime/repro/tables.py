"""The paper's tables as reproductions: one registered ``Table`` each (``TABLES``).

A table's ``rows`` function runs (or skips, when done) every step its rows need and returns the
rows; its ``render`` turns them into markdown lines and its ``plot`` (if any) into a PNG.
``write_table`` writes ``table.md`` and ``table.json`` (rows, dev/test perplexities, tuned
options, the exact command and wall time of every step, commit, machine, budget). The
WikiText-2-sized tables (7, 10-15, Figure 3) are here; the paper-scale ones (2-5) in
``trime.repro.paper_tables``.
"""

import json
import math
import os
import platform
import statistics
import subprocess
import time

import trime
from trime.repro.hf_table import HF_TABLES
from trime.repro.paper_tables import PAPER_SCALE_TABLES
from trime.repro.recipes import train_all
from trime.repro.rows import (Table, memory_options as _memory, plain_row, tuned_row as _tuned_row,
                              tuned_text as _tuned_text)

# paper Table 10 (7M models, WikiText-103): dev / test perplexity
PAPER_TABLE10 = {"Transformer": (82.68, 83.66), "+ continuous cache": (67.45, 68.08),
                 "kNN-LM": (51.88, 52.24), "kNN-LM + continuous cache": (45.15, 45.82),
                 "TrimeLM": (54.78, 54.69), "TrimeLM_long": (60.71, 60.10),
                 "TrimeLM_ext": (41.50, 42.36)}
# paper Table 7 (247M models, WikiText-103 dev): model -> test memories -> perplexity
PAPER_TABLE7 = {"TrimeLM": {"local": 17.10, "local,long": 17.17, "local,long,ext": 17.40},
                "TrimeLM_long": {"local": 17.12, "local,long": 17.01, "local,long,ext": 16.48},
                "TrimeLM_ext": {"local": 17.99, "local,long": 17.80, "local,long,ext": 15.51}}
TRIME_MODELS = {"TrimeLM": "trime", "TrimeLM_long": "trime_long", "TrimeLM_ext": "trime_ext"}
# Table 10's tuning runs of the TRIME models (model, test memory): the cells of Tables 7, 11 and
# 15 with the same model and memory are these very runs, tuned once
TABLE10_TUNING = {("TrimeLM", "local"): "trimelm", ("TrimeLM_long", "local,long"): "trimelm-long",
                  ("TrimeLM_ext", "local,long,ext"): "trimelm-ext"}
# paper Table 11 and Table 15 (7M models, WikiText-103 dev)
PAPER_TABLE11 = {"TrimeLM_ext": 41.50, "w/o BM25 batching": 45.71, "w/o back-prop to memory": 45.15}
PAPER_TABLE12 = {"Transformer": {3072: 82.70, 512: 81.15, 150: 81.40},
                 "+ continuous cache": {3072: 67.45, 512: 71.29, 150: 75.10},
                 "TrimeLM": {3072: 54.89, 512: 63.22, 150: 71.82}}
PAPER_TABLE15 = {0.0: 54.33, 0.1: 49.85, 0.5: 45.08, 0.9: 41.50, 1.0: 41.86}
# paper Table 13 (7M, WikiText-103 dev): top-K retrieval accuracy (%), and Table 14 (247M, dev):
# perplexity per frequency bucket of the target (and the average)
PAPER_TABLE13 = {"kNN-LM": {1: 25.82, 8: 50.03, 64: 69.85, 1024: 86.97},
                 "TrimeLM_ext": {1: 27.64, 8: 51.16, 64: 70.43, 1024: 87.18}}
BUCKETS = ("> 10k", "1k-10k", "100-1k", "10-100", "<= 10")
PAPER_TABLE14 = {"Transformer": (3.35, 4.11, 13.63, 30.46, 240.39, 18.04),
                 "kNN-LM + continuous cache": (3.14, 3.85, 12.92, 26.90, 196.03, 16.23),
                 "TrimeLM": (3.47, 4.15, 13.57, 28.05, 198.33, 17.10),
                 "TrimeLM_long": (3.43, 4.13, 13.62, 27.89, 194.89, 17.01),
                 "TrimeLM_ext": (3.15, 3.84, 12.50, 25.41, 171.61, 15.51)}


def table10(recipes):
    """Table 10: Transformer, + continuous cache, kNN-LM, kNN-LM + cache, TrimeLM, TrimeLM_long,
    TrimeLM_ext; same budget for every model; dev and test perplexity."""
    recipes.preprocess()
    vanilla, *trained = recipes.checkpoints([dict(model=m) for m in ("vanilla", *TRIME_MODELS.values())])
    models = dict(zip(TRIME_MODELS, trained))
    vanilla_dstore = recipes.datastore(vanilla, "l2")
    ext_dstore = recipes.datastore(models["TrimeLM_ext"], "ip")
    rows = {"Transformer": plain_row(recipes, "transformer", vanilla)}
    # the continuous cache reads the local memory, as in the paper (§2.2: Grave et al. "use the
    # local memory at testing time"; Table 12's cache improves with L); kNN-LM + cache adds the
    # datastore (§5.1 compares it with TrimeLM_ext w/o M_long). The cache over long memory is Figure 3.
    rows["+ continuous cache"] = _tuned_row(recipes, "transformer-cache", vanilla, "cache",
                                            _memory(recipes, "local"))
    rows["kNN-LM"] = _tuned_row(recipes, "knnlm", vanilla, "knnlm",
                                _memory(recipes, "ext", vanilla_dstore, "l2"))
    rows["kNN-LM + continuous cache"] = _tuned_row(
        recipes, "knnlm-cache", vanilla, "knnlm", _memory(recipes, "local,ext", vanilla_dstore, "l2"))
    for (name, memory), row in TABLE10_TUNING.items():
        rows[name] = _tuned_row(recipes, row, models[name], "trime", _memory(recipes, memory, ext_dstore))
    for name, row in rows.items():
        row["paper_dev"], row["paper_test"] = PAPER_TABLE10[name]
    return rows


def table7(recipes):
    """Table 7: the three TRIME models × test memories {local, local+long, local+ext,
    local+long+ext}, each with its own datastore of train, on dev (values tuned on dev)."""
    recipes.preprocess()
    rows = {}
    checkpoints = recipes.checkpoints([dict(model=recipe) for recipe in TRIME_MODELS.values()])
    for name, checkpoint in zip(TRIME_MODELS, checkpoints):
        recipe = TRIME_MODELS[name]
        dstore = recipes.datastore(checkpoint, "ip")
        rows[name] = {}
        for memory in ("local", "local,long", "local,ext", "local,long,ext"):
            row = TABLE10_TUNING.get((name, memory), f"table7-{recipe}-{memory.replace(',', '-')}")
            cell = _tuned_row(recipes, row, checkpoint, "trime", _memory(recipes, memory, dstore),
                              test=False)
            cell["paper_dev"] = PAPER_TABLE7[name].get(memory)
            rows[name][memory] = cell
    return rows


def _ext_dev_rows(recipes, variants):
    """TrimeLM_ext variants ({row: checkpoint() arguments}), trained ``jobs`` at a time, each
    with its own datastore, tuned and scored on dev (local + long + ext)."""
    for variant in variants.values():
        if variant.get("drop") == recipes.budget.local_drop_prob:
            variant["drop"] = None  # the default p: the same model as Table 10's TrimeLM_ext
    checkpoints = recipes.checkpoints([dict(model="trime_ext", **v) for v in variants.values()])
    table10_ext = recipes.training("trime_ext")[2]
    rows = {}
    for row, checkpoint in zip(variants, checkpoints):
        dstore = recipes.datastore(checkpoint, "ip")
        # Table 10's TrimeLM_ext itself: its tuning run, not a second one
        tuning = TABLE10_TUNING["TrimeLM_ext", "local,long,ext"] if checkpoint == table10_ext else row
        rows[row] = _tuned_row(recipes, tuning, checkpoint, "trime",
                               _memory(recipes, "local,long,ext", dstore), test=False)
    return rows


def table11(recipes):
    """Table 11: TrimeLM_ext, without BM25 batching (random batches), without back-prop to memory
    (--detach-memory); dev perplexity with local + long + external memory. Beside each row: the
    fraction of targets found in the other segments of a training batch (BM25 vs random
    batches, from trime-bm25-batches), the in-batch positives that §4.3's batching is for."""
    recipes.preprocess()
    names = {"table11-ext": "TrimeLM_ext", "table11-random": "w/o BM25 batching",
             "table11-detached": "w/o back-prop to memory"}
    trained = _ext_dev_rows(recipes, {"table11-ext": {}, "table11-random": {"batching": "random"},
                                      "table11-detached": {"detach": True}})
    path = recipes.bm25_batches()
    if recipes.runner.dry_run:  # the file is written by the step printed above
        return {}
    with open(path) as f:
        coverage = json.load(f)["in_batch_coverage"]
    rows = {}
    for row, name in names.items():
        batching = "random" if row == "table11-random" else "bm25"
        rows[name] = dict(trained[row], paper_dev=PAPER_TABLE11[name],
                          in_batch_targets=coverage[batching]["all"],
                          in_batch_rare_targets=coverage[batching]["rare"])
    return rows


def table15(recipes):
    """Table 15: TrimeLM_ext trained with the own segment dropped from memory with probability p,
    p in {0, 0.1, 0.5, 0.9, 1}; dev perplexity with local + long + external memory; plot."""
    recipes.preprocess()
    trained = _ext_dev_rows(recipes, {f"table15-p{p:g}": {"drop": p} for p in PAPER_TABLE15})
    return {f"p = {p:g}": dict(trained[f"table15-p{p:g}"], p=p, paper_dev=PAPER_TABLE15[p])
            for p in PAPER_TABLE15}


# the seed study of the Table 15 ordering that failed with seed 1 (p = 0.1 < p = 0): seeds 1 and 2,
# and the third only when the first two disagree on the ordering
SEED_STUDY_PS, SEED_STUDY_SEEDS = (0.0, 0.1), (1, 2, 3)


def table15_seeds(recipes):
    """Table 15's p = 0 and p = 0.1 TrimeLM_ext models trained from more seeds (seed 1: Table 15's
    own models; others named *_seed{s}), each with its datastore, tuned and scored on dev (local +
    long + ext); per p the dev perplexity of each seed, their mean and sample standard deviation."""
    recipes.preprocess()
    by_seed = {}
    for seed in SEED_STUDY_SEEDS:
        if len(by_seed) >= 2 and (recipes.runner.dry_run or len(set(
                rows[0.1]["valid"] < rows[0.0]["valid"] for rows in by_seed.values())) == 1):
            break  # (a dry run cannot know whether the first two will disagree)
        trained = _ext_dev_rows(recipes.with_seed(seed),
                                {f"table15-p{p:g}": {"drop": p} for p in SEED_STUDY_PS})
        by_seed[seed] = {p: trained[f"table15-p{p:g}"] for p in SEED_STUDY_PS}
    if recipes.runner.dry_run:
        return {}
    rows = {}
    for p in SEED_STUDY_PS:
        values = [by_seed[seed][p]["valid"] for seed in by_seed]
        rows[f"p = {p:g}"] = {"p": p, "valid": statistics.mean(values), "std": statistics.stdev(values),
                              "paper_dev": PAPER_TABLE15[p],
                              "seeds": {str(seed): by_seed[seed][p] for seed in by_seed}}
    return rows


def seed_verdict(rows) -> dict:
    """p = 0.1 against p = 0 over the seeds: the paired differences (same seed), on how many
    seeds the paper's ordering holds, and whether the mean difference is within seed noise (not
    larger than either row's standard deviation across seeds)."""
    low, high = rows["p = 0.1"], rows["p = 0"]
    differences = [low["seeds"][seed]["valid"] - high["seeds"][seed]["valid"] for seed in low["seeds"]]
    mean = statistics.mean(differences)
    return {"differences": differences, "holds_on": sum(d < 0 for d in differences),
            "mean_difference": mean, "within_noise": abs(mean) <= max(low["std"], high["std"])}


def table12(recipes):
    """Table 12: Transformer, + continuous cache, TrimeLM trained and scored on dev with segments
    of L tokens, L in the budget's segment_lengths (150, 512, 3072), the same number of tokens
    per update for every L (batch = tokens_per_update / L segments)."""
    recipes.preprocess()
    lengths = recipes.budget.segment_lengths
    variants = [recipes.at_length(length, recipes.budget.tokens_per_update) for length in lengths]
    checkpoints = train_all([(variant, dict(model=model)) for variant in variants
                             for model in ("vanilla", "trime")])
    rows = {name: {} for name in PAPER_TABLE12}
    for i, (length, variant) in enumerate(zip(lengths, variants)):
        vanilla, trimelm = checkpoints[2 * i:2 * i + 2]
        rows["Transformer"][length] = {
            "options": [], "valid": variant.evaluate("table12-transformer", vanilla, "valid", [])}
        rows["+ continuous cache"][length] = _tuned_row(  # local memory, as in table10
            variant, "table12-cache", vanilla, "cache", _memory(variant, "local"), test=False)
        rows["TrimeLM"][length] = _tuned_row(variant, "table12-trimelm", trimelm, "trime",
                                             _memory(variant, "local"), test=False)
        for name, cells in rows.items():
            cells[length].update(batch_size=variant.budget.batch_size,
                                 paper_dev=PAPER_TABLE12[name].get(length))
    return rows


def plot_table15(rows, png) -> bool:
    from trime.plots import line_plot

    ps = [row["p"] for row in rows.values()]
    return line_plot(png, {"trime-repro": (ps, [row["valid"] for row in rows.values()], "-"),
                           "paper (WikiText-103, 7M)": (ps, [row["paper_dev"] for row in rows.values()], "--")},
                     "p, probability of dropping the own segment from memory", "dev perplexity")


def _tuned(recipes, row):
    """best.json of a row's last tuning (after any widening), as table10 ran it."""
    row += recipes.suffix
    candidates = [row] + [f"{row}-widened{i}" for i in range(1, recipes.budget.max_widen + 1)]
    done = [c for c in candidates if os.path.exists(recipes.runner.path("tune", c, "best.json"))]
    with open(recipes.runner.path("tune", done[-1], "best.json")) as f:
        return json.load(f)


def table13(recipes):
    """Table 13: top-K retrieval accuracy on dev (the target among the values of the K nearest
    datastore entries), kNN-LM (its l2 datastore) vs TrimeLM_ext (its ip datastore); Table 10's
    models and tuning runs (run or reused)."""
    table10(recipes)
    if recipes.runner.dry_run:  # no step of its own: it reads table10's tuning runs
        return {}
    rows = {}
    for name, row in (("kNN-LM", "knnlm"), ("TrimeLM_ext", "trimelm-ext")):
        accuracy = {int(a["K"]): 100 * a["accuracy"] for a in _tuned(recipes, row)["retrieval_accuracy"]}
        rows[name] = {"accuracy": accuracy,
                      "paper": {k: v for k, v in PAPER_TABLE13[name].items() if k in accuracy}}
    return rows


def table14(recipes):
    """Table 14: dev perplexity per frequency bucket of the target (its count in dev), for the
    models of Table 10 at their tuned values; the Transformer's is the LM alone."""
    table10(recipes)
    if recipes.runner.dry_run:  # no step of its own: it reads table10's tuning runs
        return {}
    sources = {"Transformer": ("transformer-cache", "LM only"),
               "kNN-LM + continuous cache": ("knnlm-cache", "best"), "TrimeLM": ("trimelm", "best"),
               "TrimeLM_long": ("trimelm-long", "best"), "TrimeLM_ext": ("trimelm-ext", "best")}
    rows = {}
    for name, (row, column) in sources.items():
        tuned = _tuned(recipes, row)
        buckets = {b["bucket"]: b[column] for b in tuned["frequency_buckets"]}
        tokens = {b["bucket"]: b["tokens"] for b in tuned["frequency_buckets"]}
        average = tuned["best"]["perplexity"] if column == "best" else None
        if average is None:  # the LM alone over all dev tokens: the buckets' token-weighted mean
            total = sum(tokens.values())
            average = math.exp(sum(math.log(buckets[b]) * tokens[b] for b in buckets if tokens[b]) / total)
        rows[name] = {"buckets": buckets, "tokens": tokens, "average": average,
                      "paper": dict(zip((*BUCKETS, "avg"), PAPER_TABLE14[name]))}
    return rows


def figure3(recipes):
    """Figure 3: dev perplexity vs long-memory size S, TrimeLM_long (TRIME, Eq. 6) and the
    Transformer + continuous cache "adapted to long-term memory", Table 10's models at their
    values tuned on dev with local + long memory (S = the budget's long_memory_size)."""
    table10(recipes)
    vanilla, trime_long = recipes.checkpoints([dict(model="vanilla"), dict(model="trime_long")])
    recipes.tune("transformer-cache-long", vanilla, "cache", _memory(recipes, "local,long"))
    rows = {}
    for name, checkpoint, row, scoring in (
            ("TrimeLM_long", trime_long, "trimelm-long", "trime"),
            ("Transformer + continuous cache", vanilla, "transformer-cache-long", "cache")):
        if recipes.runner.dry_run:  # the shell reads the tuned values from best.args
            options = [f"$(cat {recipes.runner.path('tune', row + recipes.suffix, 'best.args')})"]
            rows[name] = {"perplexity": recipes.memory_curve(checkpoint, scoring, options)}
            continue
        tuned = {k: v for k, v in _tuned(recipes, row)["options"].items()
                 if k in ("--memory-temp", "--cache-lambda", "--cache-theta")}
        rows[name] = {"tuned_on_dev": tuned, "perplexity": recipes.memory_curve(
            checkpoint, scoring, [str(a) for k, v in tuned.items() for a in (k, v)])}
    return rows


def plot_figure3(rows, png) -> bool:
    from trime.plots import line_plot

    curves = {}
    for name, row in rows.items():
        points = sorted((int(size), perplexity) for size, perplexity in row["perplexity"].items())
        curves[name] = (*zip(*points), "-")
    return line_plot(png, curves, "long-memory size S (tokens; 0 = local memory only)", "dev perplexity")


def plot_table14(rows, png) -> bool:
    from trime.plots import pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    width = 0.8 / len(rows)
    for i, (name, row) in enumerate(rows.items()):
        values = [row["buckets"][b] for b in BUCKETS]
        ax.bar([j + i * width for j in range(len(BUCKETS))], values, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(BUCKETS))], BUCKETS)
    ax.set_xlabel("frequency of the target in dev")
    ax.set_ylabel("dev perplexity (log scale)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    save_figure(plt, fig, png)
    return True


def render_table10(rows):
    lines = ["| model | dev ppl | test ppl | paper dev | paper test | tuned on dev |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['valid']:.2f} | {row['test']:.2f} | {row['paper_dev']} | "
                     f"{row['paper_test']} | {_tuned_text(row)} |")
    return lines


def render_table13(rows):
    ks = sorted({k for row in rows.values() for k in row["accuracy"]})
    lines = ["| model | " + " | ".join(f"top-{k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{row['accuracy'][k]:.1f}% (paper {row['paper'].get(k, '-')}%)" for k in ks) + " |")
    return lines


def render_table14(rows):
    lines = ["| model | " + " | ".join(BUCKETS) + " | avg |", "|---" * (len(BUCKETS) + 2) + "|"]
    for name, row in rows.items():
        cells = [f"{row['buckets'][b]:.2f}" if row["tokens"][b] else "-" for b in BUCKETS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['average']:.2f} |")
    return lines + ["", "Paper (247M, WikiText-103): " + "; ".join(
        f"{name} " + " / ".join(f"{v:g}" for v in row["paper"].values()) for name, row in rows.items())]


def render_table11(rows):
    lines = ["| model | dev ppl | paper dev | targets in the batch's other segments: all / rare "
             "| tuned on dev |", "|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['valid']:.2f} | {row['paper_dev']} | "
                     f"{row['in_batch_targets']:.1%} / {row['in_batch_rare_targets']:.1%} | "
                     f"{_tuned_text(row)} |")
    return lines + ["", "Rare: train count <= 100. The detached model is trained on the BM25 batches."]


def render_table12(rows):
    lengths = list(next(iter(rows.values())))
    lines = ["| model | " + " | ".join(f"L = {length}" for length in lengths) + " |",
             "|---" * (len(lengths) + 1) + "|"]
    for name, cells in rows.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{cells[length]['valid']:.2f}" + (f" (paper {cells[length]['paper_dev']})"
                                               if cells[length]["paper_dev"] else "")
            for length in lengths) + " |")
    return lines + ["", "Batch sizes (segments per update): " + ", ".join(
        f"L = {length}: {cells['batch_size']}" for length, cells in next(iter(rows.values())).items())]


def render_figure3(rows):
    sizes = list(next(iter(rows.values()))["perplexity"])
    lines = ["| model | " + " | ".join(f"S = {size}" for size in sizes) + " | tuned on dev |",
             "|---" * (len(sizes) + 2) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{row['perplexity'][size]:.2f}" for size in sizes)
                     + f" | {_tuned_text(row)} |")
    return lines + ["", "The plot: figure3.png."]


def render_table15(rows):
    lines = ["| model | dev ppl | paper dev | tuned on dev |", "|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['valid']:.2f} | {row['paper_dev']} | {_tuned_text(row)} |")
    return lines


def render_table15_seeds(rows):
    seeds = list(next(iter(rows.values()))["seeds"])
    lines = ["| model | " + " | ".join(f"seed {seed}" for seed in seeds) + " | mean ± sd | paper dev |",
             "|---" * (len(seeds) + 3) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{row['seeds'][seed]['valid']:.2f}" for seed in seeds)
                     + f" | {row['valid']:.2f} ± {row['std']:.2f} | {row['paper_dev']} |")
    verdict = seed_verdict(rows)
    lines += ["", "p = 0.1 minus p = 0, seed by seed: "
              + ", ".join(f"{d:+.2f}" for d in verdict["differences"])
              + f" (the paper's p = 0.1 < p = 0 holds on {verdict['holds_on']} of {len(seeds)} seeds); "
              f"mean {verdict['mean_difference']:+.2f}, "
              + ("within" if verdict["within_noise"] else "beyond")
              + " the seed-to-seed standard deviation of either row.",
              "", "Tuned on dev (τ, λ, τ′), seed by seed:", ""]
    for name, row in rows.items():
        lines.append(f"- {name}: " + "; ".join(f"seed {seed}: {_tuned_text(cell)}"
                                              for seed, cell in row["seeds"].items()))
    return lines


def render_table7(rows):
    memories = ["local", "local,long", "local,ext", "local,long,ext"]
    lines = ["| model | " + " | ".join(memories) + " |", "|---" * (len(memories) + 1) + "|"]
    for name, cells in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{cells[m]['valid']:.2f}" + (
            f" (paper {cells[m]['paper_dev']})" if cells[m]["paper_dev"] else "")
            for m in memories) + " |")
    return lines


def tokens_per_update(budget) -> str:
    return f"about {budget.tokens_per_update}"


TABLES = {table.name: table for table in (
    Table("table10", table10, render_table10),
    Table("table7", table7, render_table7),
    Table("table11", table11, render_table11),
    Table("table12", table12, render_table12, batch=tokens_per_update),
    Table("table13", table13, render_table13),
    Table("table14", table14, render_table14, plot=plot_table14),
    Table("table15", table15, render_table15, plot=plot_table15),
    Table("table15-seeds", table15_seeds, render_table15_seeds),
    Table("figure3", figure3, render_figure3, plot=plot_figure3),
    *PAPER_SCALE_TABLES, *HF_TABLES)}


def commit_id() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(trime.USER_DIR), check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_description(device) -> str:
    text = f"{platform.machine()}, {os.cpu_count()} CPU cores"
    if device == "cuda":
        import torch

        text += f", {torch.cuda.get_device_name(0)}"
    return text


def write_table(table: str, rows, recipes, out_dir: str, started: float) -> str:
    """results/<table>/table.json and table.md (and the table's plot); returns the markdown."""
    entry = TABLES[table]
    os.makedirs(out_dir, exist_ok=True)
    steps = {name: {"command": r["command"], "seconds": r.get("seconds")}
             for name, r in recipes.runner.records.items()}
    report = {"table": table, "commit": commit_id(), "machine": machine_description(recipes.budget.device),
              "budget": recipes.budget.describe(), "data": recipes.splits,
              "wall_seconds_this_invocation": round(time.time() - started, 1),
              "rows": recipes.runner.portable_value(rows), "steps": steps}
    with open(os.path.join(out_dir, "table.json"), "w") as f:
        json.dump(report, f, indent=1)
    seconds = sum(s["seconds"] or 0 for s in steps.values())
    markdown = "\n".join([
        f"# {table}: reproduction", "",
        f"`trime-repro {table}` at commit `{report['commit']}` on {report['machine']}; budget: "
        f"{recipes.budget.updates} updates of {entry.batch(recipes.budget)} tokens per model; "
        f"{seconds:.0f} s of steps in all "
        "(every command and its wall time: table.json).", "", *entry.render(rows), ""])
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(markdown)
    if entry.plot is not None:
        entry.plot(rows, os.path.join(out_dir, f"{table}.png"))
    return markdown
