"""Benchmark: fairseq-eval-lm speed with long memory vs local memory only (one run, same model).

Prints tokens/s of fairseq's eval-lm loop with --eval-memory local and with
--eval-memory local,long at S = --long-memory-size (default 12,288, the paper's
247M setting), on the same checkpoint and the same batches, and their ratio
(target: >= 0.8; the median over alternating rounds of the per-round ratio). The FIFO is never reset (--long-memory-reset never) so that it
is full — the slowest case.

Without --data/--path it needs no download: it writes a synthetic Zipf corpus
with WikiText-103's vocabulary size (267,744 words), binarises it and trains the
paper's 7M model (Table 9) for 1 update (speed does not depend on the weights).

    python scripts/bench/eval_long_memory.py
    python scripts/bench/eval_long_memory.py --data runs/wikitext2/bin --path runs/wikitext2/trime/checkpoint_best.pt
"""

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import warnings

warnings.filterwarnings("ignore")


def small_checkpoint(work, tokens_per_sample, vocab):
    """The paper's 7M model (Table 9: 8 layers, d = 128, FFN 512, adaptive input/softmax) on a
    synthetic Zipf-distributed corpus with a `vocab`-word dictionary (WikiText-103: 267,744),
    trained for 1 update: eval speed does not depend on the weights."""
    import numpy as np

    import trime

    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, "dict.txt"), "w") as f:
        f.writelines(f"w{i} {vocab - i}\n" for i in range(vocab))
    rng = np.random.default_rng(0)
    for split, n_tokens in (("train", 20_000), ("valid", 400_000)):
        ranks = np.minimum(rng.zipf(1.2, n_tokens), vocab) - 1
        with open(os.path.join(work, f"{split}.txt"), "w") as f:
            for i in range(0, n_tokens, 100):
                f.write(" ".join(f"w{r}" for r in ranks[i:i + 100]) + "\n")
    bin_dir = os.path.join(work, "bin")
    quiet = dict(check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(["fairseq-preprocess", "--only-source", "--srcdict", f"{work}/dict.txt",
                    "--trainpref", f"{work}/train.txt", "--validpref", f"{work}/valid.txt",
                    "--destdir", bin_dir, "--workers", "2"], **quiet)
    subprocess.run(["fairseq-train", bin_dir, "--user-dir", trime.USER_DIR, "--task", "trime_lm",
                    "--criterion", "trime_loss", "--arch", "transformer_lm", "--decoder-layers", "8",
                    "--decoder-embed-dim", "128", "--decoder-ffn-embed-dim", "512",
                    "--decoder-attention-heads", "4", "--decoder-input-dim", "128",
                    "--decoder-output-dim", "128", "--adaptive-input", "--adaptive-input-cutoff",
                    "20000,60000", "--adaptive-softmax-cutoff", "20000,60000", "--tie-adaptive-weights",
                    "--tokens-per-sample", str(tokens_per_sample), "--batch-size", "2",
                    "--max-update", "1", "--optimizer", "adam", "--lr", "1e-4",
                    "--save-dir", f"{work}/ckpt", "--no-epoch-checkpoints", "--cpu",
                    "--num-workers", "0", "--disable-validation"], **quiet)
    return bin_dir, os.path.join(work, "ckpt", "checkpoint_last.pt")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="binarised data (default: generated quickstart corpus)")
    parser.add_argument("--path", help="checkpoint (default: the paper's 7M config on a synthetic "
                        "corpus, trained for 1 update)")
    parser.add_argument("--vocab", type=int, default=267744,
                        help="dictionary size of the synthetic corpus (default: WikiText-103's)")
    parser.add_argument("--gen-subset", default="valid")
    parser.add_argument("--tokens-per-sample", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1, help="segments per batch (authors: 1)")
    parser.add_argument("--long-memory-size", type=int, default=12288)
    parser.add_argument("--max-batches", type=int, default=40,
                        help="batches timed per setting and round (after the FIFO has filled)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians reported")
    parser.add_argument("--cpu", action="store_true", default=True)
    args = parser.parse_args()
    if (args.data is None) != (args.path is None):
        parser.error("give both --data and --path, or neither")

    import torch
    logging.disable(logging.WARNING)
    from trime.lm.harness import evaluate, load_for_eval
    from trime.settings import EvalSettings

    work = tempfile.mkdtemp(prefix="trime-bench-eval-")
    data, path = (args.data, args.path) if args.data else small_checkpoint(work, args.tokens_per_sample, args.vocab)
    task, model, cfg, dataset = load_for_eval(
        data, path, args.gen_subset, args.tokens_per_sample, 0, args.batch_size, args.cpu,
        ("--eval-memory", "local,long", "--doc-boundary", "none"))
    local = EvalSettings(eval_memory="local")
    long = EvalSettings(eval_memory="local,long", long_memory_size=args.long_memory_size,
                        long_memory_reset="never")
    # the first `fill` batches fill the FIFO; only the batches after them are timed
    fill = -(-args.long_memory_size // (args.tokens_per_sample * args.batch_size))
    evaluate(task, model, cfg, dataset, local, max_batches=3)  # warm-up
    speeds = {"local": [], "local,long": []}
    for round_ in range(args.rounds):  # alternate the settings: drifts hit both alike
        for name, settings in (("local", local), ("local,long", long)):
            result = evaluate(task, model, cfg, dataset, settings, max_batches=fill + args.max_batches)
            timed = result["batches"][fill:]
            tokens, seconds = sum(n for n, _ in timed), sum(t for _, t in timed)
            speeds[name].append(tokens / seconds)
            print(f"round {round_ + 1}  {name:11s} {tokens:7d} tokens  {tokens / seconds:9.1f} tokens/s")
    results = {name: statistics.median(values) for name, values in speeds.items()}
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.1f}M parameters, vocabulary {len(task.dictionary)}, "
          f"L = {args.tokens_per_sample}, batch = {args.batch_size}, device = cpu "
          f"({torch.get_num_threads()} threads)")
    # each round times both settings back to back: the median of the paired ratios
    ratio = statistics.median(b / a for a, b in zip(speeds["local"], speeds["local,long"]))
    print(f"median tokens/s: local {results['local']:.1f}, local,long {results['local,long']:.1f}")
    print(f"tokens/s with local,long (S = {args.long_memory_size}, FIFO full) / tokens/s with local "
          f"= {ratio:.3f} (median over {args.rounds} rounds)  "
          f"(target >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'})")


if __name__ == "__main__":
    sys.exit(main())
