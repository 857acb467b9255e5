"""`trime-tune`: grid-search τ, λ, τ′ (or kNN-LM's λ, T, and the cache's λ_c, θ) on a dev split from one pass.

The model runs once over the split with the memories given after ``--`` (TASK_OPTIONS:
the same ``--task trime_lm`` options as fairseq-eval-lm: --eval-memory, --long-memory-size,
--dstore, --knn-k, --knn-sim, --doc-boundary, ...).
For every scored token it keeps a few numbers (``trime.core.target_stats.TargetStats``:
s_w*, log Z_vocab and log Σ exp(sim/t) over each memory set for every temperature
of the grid), so every grid point is a few vector operations, not a model pass.

Writes to --out-dir: ``tune.csv`` (every grid point), ``best.json`` and ``best.args`` (the
chosen options on one line: ``fairseq-eval-lm ... $(cat OUT/best.args)``), a heat map
``tune.png`` (λ × τ′ at the best τ, or perplexity vs τ without a datastore), and, with
external memory, ``retrieval_accuracy.csv`` (paper Table 13: share of tokens whose
target is among the top-K retrieved values) and ``frequency_buckets.csv`` (Table 14:
perplexity by the target's frequency in the tuned split, as in the paper). While the pass runs,
``scoring.partial.pt`` holds what it has scored every five minutes: run the same command again
after an interruption and it goes on from there.

    trime-tune data-bin --path ckpt/checkpoint_best.pt --gen-subset valid --tokens-per-sample 512 \\
        --taus 1.0,1.1,1.2,1.3 --interp-temps 0.5,1,2,5,10 --lambdas 0.1,0.2,0.3,0.4 \\
        -- --eval-memory local,long,ext --long-memory-size 12288 --dstore dstore --knn-k 1024
    # kNN-LM + continuous cache on a vanilla model (its own l2 datastore):
    trime-tune data-bin --path vanilla.pt --scoring knnlm --lambdas 0.1,0.25,0.4 --interp-temps 1,3,10 \\
        --cache-lambdas 0,0.1,0.2 --cache-thetas 0.1,0.3,1 -- --eval-memory local,ext --dstore vdstore
"""

import argparse
import csv
import json
import logging
import os
import sys

from trime.cli.parsing import HelpFormatter, add_eval_arguments, command_fingerprint
from trime.core.grids import LM_GRIDS, edge_warning, edges_of
from trime.errors import console_script, one_line
from trime.lm.tuning import ACCURACY_KS, collect, frequency_table, grid
from trime.partial import Partial

logger = logging.getLogger("trime.tune")
PARTIAL = "scoring.partial.pt"  # the pass so far, while it runs (trime.lm.tuning.collect)

def warn_on_edges(grids, best, kinds=LM_GRIDS) -> list:
    """Log a warning for each grid {option name: values} whose value in the ``best`` row sits
    on an edge (``trime.core.grids.edges_of``), naming values that widen it; returns the names
    of those grids."""
    edges = edges_of(grids, best, kinds)
    for name, side in edges:
        logger.warning("TRIME: " + edge_warning("--" + name.replace("_", "-"), grids[name],
                                                best[kinds[name][0]], side, kinds[name][1]))
    return [name for name, _ in edges]


def comma_values(text, name, parser, low=None, below=None, kind=float):
    """The comma-separated values of option --``name``: each > ``low`` or in [0, ``below``)."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--{name} must be comma-separated {kind.__name__}s, got {text!r}")
    if not values:
        parser.error(f"--{name} is empty")
    for v in values:
        if (low is not None and v <= low) or (below is not None and not 0 <= v < below):
            parser.error(f"--{name}: {v} is out of range "
                         + (f"(must be > {low})" if low is not None else f"(must be in [0, {below}))"))
    return values


def plot(rows, best, has_ext, png):
    """tune.png: the λ × τ′ (or T) plane through the best point with external memory, the
    λ_c × θ plane for the cache alone, else perplexity vs τ."""
    from trime.plots import heat_map, pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if has_ext:
        fixed = ("tau", "cache_lambda", "cache_theta")
        chosen = [r for r in rows if all(r[k] == best[k] for k in fixed)]
        heat_map(fig, ax, chosen, "interp_temp", "lambda",
                  "τ′ (temperature of the memory distribution)", "λ")
        at = [f"{name} = {best[key]:g}" for key, name in zip(fixed, ("τ", "λ_c", "θ"))
              if best[key] is not None]
        ax.set_title("perplexity" + (" at " + ", ".join(at) if at else ""))
    elif best["cache_lambda"] is not None:
        heat_map(fig, ax, rows, "cache_theta", "cache_lambda", "θ (continuous cache)", "λ_c")
        ax.set_title("perplexity")
    else:
        ax.plot([r["tau"] for r in rows], [r["perplexity"] for r in rows], marker="o")
        ax.set_xlabel("τ (memory temperature, Eq. 6)")
        ax.set_ylabel("perplexity")
        ax.grid(alpha=0.3)
    save_figure(plt, fig, png)
    return True


def option_words(options: dict) -> str:
    """{--option: value} as command-line words: '--memory-temp 1.1 --knn-lambda 0.3'."""
    return " ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in options.items())


def write_best_args(out_dir, options: dict) -> None:
    """best.args: the chosen options on one line, to paste or to pass on as
    ``fairseq-eval-lm ... $(cat OUT/best.args)``."""
    with open(os.path.join(out_dir, "best.args"), "w") as f:
        f.write(option_words(options) + "\n")


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@console_script
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="trime-tune", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=HelpFormatter)
    add_eval_arguments(parser, "the split to tune on (dev; never test)")
    parser.add_argument("--scoring", choices=("trime", "knnlm", "cache"), default="trime",
                        help="trime: τ (Eq. 6) and, with ext memory, λ and τ′ (Eq. 8-9); knnlm: "
                             "kNN-LM's λ and T (--interp-temps) with --eval-memory ext, and the "
                             "cache's λ_c, θ with span memory too; cache: the continuous cache's "
                             "λ_c, θ (--cache-lambdas, --cache-thetas)")
    parser.add_argument("--taus", default="0.8,0.9,1.0,1.1,1.2,1.3",
                        help="τ values of Eq. 6 (trime scoring)")
    parser.add_argument("--interp-temps", default="0.5,1,2,4,8",
                        help="τ′ of Eq. 8 (trime) or T of kNN-LM (knnlm); with external memory")
    parser.add_argument("--lambdas", default="0.05,0.1,0.2,0.3,0.4,0.5",
                        help="λ values in [0, 1) (with external memory)")
    parser.add_argument("--cache-lambdas", default="0,0.05,0.1,0.2,0.3",
                        help="λ_c of the continuous cache in [0, 1) (knnlm scoring with span memory: "
                             "kNN-LM + continuous cache)")
    parser.add_argument("--cache-thetas", default="0.03,0.1,0.3,1,3",
                        help="θ of the continuous cache, > 0 (kNN-LM + continuous cache)")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="score only the first N batches (quick looks; default: all)")
    parser.add_argument("--out-dir", default="tune",
                        help="folder for tune.csv, best.json, best.args, tune.png and the Table 13/14 CSVs "
                             "(created)")
    parser.usage = "trime-tune DATA --path CKPT [options] -- TASK_OPTIONS"
    argv = list(sys.argv[1:] if argv is None else argv)
    # after --: the --task trime_lm options that define the memories (as for fairseq-eval-lm)
    split = argv.index("--") if "--" in argv else len(argv)
    argv, task_options = argv[:split], [str(a) for a in argv[split + 1:]]
    args = parser.parse_args(argv)
    taus = comma_values(args.taus, "taus", parser, low=0)
    interp_temps = comma_values(args.interp_temps, "interp-temps", parser, low=0)
    lambdas = comma_values(args.lambdas, "lambdas", parser, below=1)
    cache_lambdas = comma_values(args.cache_lambdas, "cache-lambdas", parser, below=1)
    cache_thetas = comma_values(args.cache_thetas, "cache-thetas", parser, low=0)
    for option in ("--memory-temp", "--knn-lambda", "--knn-temp", "--eval-scoring",
                   "--cache-lambda", "--cache-theta"):
        if option in task_options:
            parser.error(f"{option} is what trime-tune searches (or sets): use --taus / --lambdas / "
                         "--interp-temps / --cache-lambdas / --cache-thetas / --scoring instead")
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO)
    from trime.lm.harness import load_for_eval

    try:
        task, model, cfg, dataset = load_for_eval(
            args.data, args.path, args.gen_subset, args.tokens_per_sample, args.context_window,
            args.batch_size, args.cpu, (*task_options, "--eval-scoring", args.scoring))
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, one_line(error, parser.prog) + "\n")  # the data, not the usage, is wrong
    settings = model.settings
    if settings.eval_memory == "none":
        parser.error("nothing to tune without memory: give e.g. -- --eval-memory local,long")
    temperatures = set(taus) | set(interp_temps)
    if settings.uses_cache:  # the cache set is summarised at t = 1/θ
        temperatures |= {1.0 / theta for theta in cache_thetas}
    os.makedirs(args.out_dir, exist_ok=True)
    # an interrupted pass resumes from here when the same command runs again (same checkpoint)
    partial = Partial(os.path.join(args.out_dir, PARTIAL),
                      command_fingerprint(argv, args.path, task_options=task_options))
    stats, first_hit, targets = collect(task, model, cfg, dataset, sorted(temperatures),
                                        args.max_batches, partial)
    logger.info(f"{len(targets)} scored tokens of {args.gen_subset}; {settings.describe()}")
    rows = grid(stats, args.scoring, settings, taus, interp_temps, lambdas, cache_lambdas,
                cache_thetas)
    best = min(rows, key=lambda r: r["loss"])
    searched = {"taus": taus, "interp_temps": interp_temps, "lambdas": lambdas,
                "cache_lambdas": cache_lambdas, "cache_thetas": cache_thetas}
    on_edge = warn_on_edges(searched, best)
    write_csv(os.path.join(args.out_dir, "tune.csv"), rows)
    best_options = {"--memory-temp": best["tau"], "--knn-lambda": best["lambda"],
                    "--knn-temp": best["interp_temp"], "--cache-lambda": best["cache_lambda"],
                    "--cache-theta": best["cache_theta"]}
    best_options = {k: v for k, v in best_options.items() if v is not None}
    report = {"best": best, "options": best_options, "tokens": len(targets),
              "split": args.gen_subset, "memory": settings.eval_memory, "scoring": args.scoring,
              "on_edge": on_edge}
    if settings.uses_ext:
        num_retrieved = settings.knn_k
        accuracy = [{"K": k, "accuracy": float((first_hit < k).double().mean())}
                    for k in ACCURACY_KS if k <= num_retrieved]
        write_csv(os.path.join(args.out_dir, "retrieval_accuracy.csv"), accuracy)
        report["retrieval_accuracy"] = accuracy
        for row in accuracy:
            print(f"retrieval accuracy (target among the top-{row['K']} retrieved values): "
                  f"{100 * row['accuracy']:.1f}%")
    buckets = frequency_table(stats, targets, args.scoring, best, settings)
    write_csv(os.path.join(args.out_dir, "frequency_buckets.csv"), buckets)
    report["frequency_buckets"] = buckets
    write_best_args(args.out_dir, best_options)
    with open(os.path.join(args.out_dir, "best.json"), "w") as f:  # last: it marks the run done
        json.dump(report, f, indent=2)
    partial.remove()
    plot(rows, best, settings.uses_ext, os.path.join(args.out_dir, "tune.png"))
    for row in buckets:
        print("frequency " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in row.items()))
    print(f"best: {option_words(best_options)} -> perplexity "
          f"{best['perplexity']:.2f} (loss {best['loss']:.4f} base 2) on {len(targets)} tokens of "
          f"{args.gen_subset}; written to {args.out_dir}/")


if __name__ == "__main__":
    main()
