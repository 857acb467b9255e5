"""`trime-memory-curve`: perplexity vs long-memory size (paper Figure 3), CSV + PNG.

Loads a checkpoint once and runs fairseq's own eval-lm loop (``trime.lm.harness``)
for every memory size S with ``--eval-memory local,long`` (S = 0 is local memory alone),
with TRIME scoring (Eq. 6, τ = --memory-temp) and, with ``--scorings trime,cache``, the
continuous-cache baseline over the same memory too. Writes ``curve.csv`` and ``curve.png`` to --out-dir.
Each size scored is kept in ``curve.partial.pt`` until the curve is written, so the same
command run again after an interruption scores only the sizes still missing.

    trime-memory-curve data-bin --path ckpt/checkpoint_best.pt --sizes 0,1024,2048,4096,8192,16384 \\
        --tokens-per-sample 512 --context-window 256 --memory-temp 1.1 --scorings trime,cache --out-dir curve
"""

import argparse
import csv
import os
import sys

from trime.cli.parsing import HelpFormatter, add_eval_arguments, command_fingerprint
from trime.errors import console_script, one_line
from trime.partial import Partial


def plot(rows, png):
    from trime.plots import line_plot

    curves = {}
    for scoring, label in (("trime", "TRIME (Eq. 6)"), ("cache", "continuous cache")):
        points = [(r["memory_size"], r["perplexity"]) for r in rows if r["scoring"] == scoring]
        if points:
            curves[label] = (*zip(*points), "-")
    return line_plot(png, curves, "long-memory size S (tokens)", "perplexity")


TASK_OPTIONS = ("memory_temp", "doc_boundary", "long_memory_reset", "cache_lambda", "cache_theta",
                "cache_key")


@console_script
def main(argv=None):
    from trime.settings import add_argparse_options, flag
    from trime.lm.task import TrimeLMConfig

    parser = argparse.ArgumentParser(prog="trime-memory-curve", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=HelpFormatter)
    add_eval_arguments(parser, "the split to score (dev)")
    parser.add_argument("--sizes", default="0,1024,2048,4096,8192,16384",
                        help="comma-separated long-memory sizes S (0 = local memory only)")
    # these options keep their --task trime_lm declaration (default, choices, help)
    add_argparse_options(parser, TrimeLMConfig, TASK_OPTIONS)
    parser.add_argument("--scorings", default="trime",
                        help="comma-separated: trime (Eq. 6 with τ = --memory-temp) and/or cache (the "
                             "continuous-cache baseline, --cache-lambda / --cache-theta)")
    parser.add_argument("--out-dir", default="memory-curve",
                        help="folder for curve.csv and curve.png (created)")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < 0:
        parser.error(f"--sizes must be non-negative memory sizes, got {args.sizes!r}")
    scorings = [s.strip() for s in args.scorings.split(",") if s.strip()]
    if not scorings or set(scorings) - {"trime", "cache"}:
        parser.error(f"--scorings must name trime and/or cache, got {args.scorings!r}")

    from tqdm import tqdm

    from trime.lm.harness import evaluate, load_for_eval

    task_options = [word for name in TASK_OPTIONS for word in (flag(name), getattr(args, name))]
    try:
        task, model, cfg, dataset = load_for_eval(
            args.data, args.path, args.gen_subset, args.tokens_per_sample, args.context_window,
            args.batch_size, args.cpu, ("--eval-memory", "local,long", *task_options))
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, one_line(error, parser.prog) + "\n")  # the data, not the usage, is wrong
    base = model.settings  # the task's: --eval-memory local,long and the options above
    runs = [(scoring, size) for scoring in scorings for size in sizes]
    os.makedirs(args.out_dir, exist_ok=True)
    partial = Partial(os.path.join(args.out_dir, "curve.partial.pt"),
                      command_fingerprint(sys.argv[1:] if argv is None else argv, args.path))
    rows = partial.load() or []
    if rows:
        print(f"resuming: {len(rows)} of {len(runs)} sizes were scored before ({partial.path})")
    for scoring, size in tqdm(runs, desc="memory sizes"):
        if any(r["scoring"] == scoring and r["memory_size"] == size for r in rows):
            continue
        result = evaluate(task, model, cfg, dataset,
                          base.replace(eval_scoring=scoring, long_memory_size=size))
        result.pop("batches")
        rows.append({"scoring": scoring, "memory_size": size, **result})
        partial.save(rows)
        tqdm.write(f"{scoring:6s} S={size:6d}  ppl {result['perplexity']:.2f}  "
                   f"({result['tokens']} tokens, {result['seconds']:.1f} s)")
    rows.sort(key=lambda r: runs.index((r["scoring"], r["memory_size"])))
    csv_path = os.path.join(args.out_dir, "curve.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["scoring", "memory_size", "loss", "perplexity",
                                               "tokens", "seconds"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {csv_path}")
    partial.remove()
    png = os.path.join(args.out_dir, "curve.png")
    if plot(rows, png):
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
