"""`trime-memory-curve`: perplexity vs long-memory size (paper Figure 3), CSV + PNG.

Loads a checkpoint once and runs fairseq's own eval-lm loop (``fairseq_cli.eval_lm.eval_lm``)
for every memory size S with ``--eval-memory local,long`` (S = 0 is local memory alone),
with TRIME scoring (Eq. 6, τ = --memory-temp) and, with ``--cache``, the continuous-cache
baseline over the same memory. Writes ``curve.csv`` and ``curve.png`` to --out-dir.

    trime-memory-curve data-bin --path ckpt/checkpoint_best.pt --sizes 0,1024,2048,4096,8192,16384 \\
        --tokens-per-sample 512 --context-window 256 --memory-temp 1.1 --cache --out-dir curve
"""

import argparse
import csv
import dataclasses
import logging
import os
import time

from trime.batching import DOC_BOUNDARIES

logger = logging.getLogger("trime.curve")


def load_for_eval(data, path, gen_subset="valid", tokens_per_sample=512, context_window=0,
                  batch_size=None, cpu=False, extra=()):
    """(task, model, cfg, dataset): a trime_lm task and one checkpoint, set up as fairseq-eval-lm does."""
    import torch
    from fairseq import checkpoint_utils, options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import trime

    argv = [str(data), "--user-dir", trime.USER_DIR, "--task", "trime_lm", "--path", str(path),
            "--gen-subset", gen_subset, "--tokens-per-sample", str(tokens_per_sample),
            "--context-window", str(context_window), *map(str, extra)]
    if batch_size:
        argv += ["--batch-size", str(batch_size)]
    if cpu:
        argv += ["--cpu"]
    args = options.parse_args_and_arch(options.get_eval_lm_parser(), argv)
    cfg = convert_namespace_to_omegaconf(args)
    utils.import_user_module(cfg.common)
    cfg.task.tokens_per_sample -= context_window  # as fairseq-eval-lm does
    task = tasks.setup_task(cfg.task)
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], task=task)
    model = models[0]
    if torch.cuda.is_available() and not cpu:
        model.cuda()
    model.prepare_for_inference_(cfg)
    task.load_dataset(gen_subset)
    return task, model, cfg, task.dataset(gen_subset)


def eval_batches(task, model, cfg, dataset):
    """fairseq-eval-lm's batches of ``dataset`` in stream order (long memory emptied first)."""
    from fairseq import utils

    model.reset_long_memory()
    return task.eval_lm_dataloader(
        dataset=dataset, max_tokens=cfg.dataset.max_tokens or 36000,
        batch_size=cfg.dataset.batch_size, max_positions=utils.resolve_max_positions(model.max_positions()),
        num_shards=1, shard_id=0, num_workers=0, context_window=cfg.eval_lm.context_window)


def pyplot():
    """matplotlib.pyplot with a file backend, or None (and a warning) when it is not installed."""
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # before its import logs
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed, no plot written: pip install 'trime[plots]'")
        return None
    return plt


def evaluate(task, model, cfg, dataset, settings, max_batches=None):
    """fairseq's eval-lm loop with these EvalSettings.

    Returns {loss (base 2), perplexity, tokens, seconds, batches}; ``batches`` lists
    (tokens, seconds spent scoring) per batch. ``max_batches``: stop early (benchmarks).
    """
    from fairseq_cli.eval_lm import eval_lm

    model.settings = settings
    itr = eval_batches(task, model, cfg, dataset)
    per_batch = []

    def counted(batches):
        for i, sample in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                return
            start = time.perf_counter()
            yield sample  # eval_lm scores it before asking for the next one
            per_batch.append((int(sample["ntokens"]) if sample else 0, time.perf_counter() - start))

    start = time.perf_counter()
    results = eval_lm([model], task.source_dictionary, counted(itr),
                      target_dictionary=task.target_dictionary)
    seconds = time.perf_counter() - start
    return {"loss": float(results["loss"]), "perplexity": float(results["perplexity"]),
            "tokens": sum(n for n, _ in per_batch), "seconds": seconds, "batches": per_batch}


def plot(rows, png):
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for scoring, label in (("trime", "TRIME (Eq. 6)"), ("cache", "continuous cache")):
        points = [(r["memory_size"], r["perplexity"]) for r in rows if r["scoring"] == scoring]
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xlabel("long-memory size S (tokens)")
    ax.set_ylabel("perplexity")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=150)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="fairseq-preprocess output directory")
    parser.add_argument("--path", required=True, help="checkpoint to evaluate")
    parser.add_argument("--sizes", default="0,1024,2048,4096,8192,16384",
                        help="comma-separated long-memory sizes S (0 = local memory only)")
    parser.add_argument("--gen-subset", default="valid")
    parser.add_argument("--tokens-per-sample", type=int, default=512)
    parser.add_argument("--context-window", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--memory-temp", type=float, default=1.0, help="τ of Eq. 6")
    parser.add_argument("--doc-boundary", default="title", choices=DOC_BOUNDARIES)
    parser.add_argument("--long-memory-reset", default="document", choices=["document", "never"])
    parser.add_argument("--cache", action="store_true", help="also the continuous-cache baseline")
    parser.add_argument("--cache-lambda", type=float, default=0.1)
    parser.add_argument("--cache-theta", type=float, default=0.3)
    parser.add_argument("--cache-key", default="final", choices=["final", "last-ffn-input"])
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--out-dir", default="memory-curve")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < 0:
        parser.error(f"--sizes must be non-negative memory sizes, got {args.sizes!r}")

    from tqdm import tqdm

    from trime.model import EvalSettings

    task, model, cfg, dataset = load_for_eval(
        args.data, args.path, args.gen_subset, args.tokens_per_sample, args.context_window,
        args.batch_size, args.cpu, ("--doc-boundary", args.doc_boundary, "--eval-memory", "local,long"))
    base = EvalSettings(memory="local,long", temperature=args.memory_temp,
                        reset_at_documents=args.long_memory_reset == "document",
                        cache_lambda=args.cache_lambda, cache_theta=args.cache_theta,
                        cache_key=args.cache_key)
    runs = [(scoring, size) for scoring in (["trime", "cache"] if args.cache else ["trime"])
            for size in sizes]
    os.makedirs(args.out_dir, exist_ok=True)
    rows = []
    for scoring, size in tqdm(runs, desc="memory sizes"):
        result = evaluate(task, model, cfg, dataset,
                          dataclasses.replace(base, scoring=scoring, long_memory_size=size))
        result.pop("batches")
        rows.append({"scoring": scoring, "memory_size": size, **result})
        tqdm.write(f"{scoring:6s} S={size:6d}  ppl {result['perplexity']:.2f}  "
                   f"({result['tokens']} tokens, {result['seconds']:.1f} s)")
    csv_path = os.path.join(args.out_dir, "curve.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["scoring", "memory_size", "loss", "perplexity",
                                               "tokens", "seconds"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {csv_path}")
    png = os.path.join(args.out_dir, "curve.png")
    if plot(rows, png):
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
