"""Benchmark: time of `trime-bm25-batches` (Algorithm 1, Appendix B) on WikiText-2 and
on a generated corpus of the size of WikiText-103.

(a) WikiText-2 train, L = 512, k = 20 (target: <= 10 s on 2 cores): the binarised
    data at runs/wikitext2/bin, or else ../shared/data/wikitext-2 binarised with
    fairseq-preprocess into a temporary directory. Prints the segment count (4,080)
    and the time of each phase, then the wall time of the whole console script
    (`python -m trime.cli.bm25_batches`, Python and fairseq start-up included).
(b) A generated corpus, --tokens N (default 100,000,000) at L = 3,072 (target:
    <= 10 min on 2 cores): token ids drawn i.i.d. from a Zipf distribution over
    --vocab (267,744, WikiText-103's fairseq dictionary size) word types,
    p(rank r) ∝ r^-s (s = --zipf-exponent, 1.0 = the classic law of word
    frequencies), rank r -> id r + 3 after the 4 special symbols, numpy seeded
    with --seed. I.i.d. words are a hard case for BM25 all-pairs scoring: real
    text is bursty (a rare word recurs within few segments), so its mid-frequency
    words have smaller document frequencies and fewer postings to merge.
    With --scaling also 10M and 30M tokens, to show how the time grows (~N²).

The functions of trime/core/bm25.py are called directly on the token arrays (the
generated corpus is not binarised); no GPU, no network.

    python scripts/bench/bm25_speed.py                      # (a) and (b) at 100M tokens
    python scripts/bench/bm25_speed.py --scaling            # (b) at 10M, 30M and 100M
    python scripts/bench/bm25_speed.py --skip-generated --backend bm25s
"""

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from trime.core.batching import bm25_chain, chain_batches  # noqa: E402
from trime.core.bm25 import BACKENDS, bm25_neighbours  # noqa: E402

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
NUM_SPECIAL = 4  # <s> <pad> </s> <unk>


def zipf_token_ids(num_tokens, vocab, exponent, seed):
    """int32 ids in [4, vocab): rank r (1-based) has probability ∝ r^-exponent, id = r + 3."""
    ranks = np.arange(1, vocab - NUM_SPECIAL + 1, dtype=np.float64)
    cdf = np.cumsum(ranks ** -exponent)
    cdf /= cdf[-1]
    rng = np.random.default_rng(seed)
    ids = np.empty(num_tokens, dtype=np.int32)
    step = 10_000_000
    for start in range(0, num_tokens, step):
        stop = min(num_tokens, start + step)
        ids[start:stop] = np.searchsorted(cdf, rng.random(stop - start), side="right") + NUM_SPECIAL
    return ids


def time_pipeline(segments, k, batch_size, seed, backend, exclude_ids=()):
    """Seconds of each phase of trime-bm25-batches' work after loading the segments."""
    timings = {}
    neighbours = bm25_neighbours(segments, k, exclude_ids=exclude_ids, backend=backend,
                                 timings=timings)
    started = time.perf_counter()
    order = bm25_chain(neighbours, seed)
    chain_batches(order, batch_size)
    timings["chain"] = time.perf_counter() - started
    return timings


def console_script(name):
    here = os.path.join(os.path.dirname(sys.executable), name)
    return here if os.path.exists(here) else name


def wikitext2_data(args, tmp):
    """A binarised WikiText-2 directory: args.data, or args.raw binarised into tmp."""
    if os.path.isfile(os.path.join(args.data, "train.bin")):
        return args.data
    if not os.path.isfile(os.path.join(args.raw, "train.txt")):
        sys.exit(f"neither {args.data}/train.bin nor {args.raw}/train.txt: give --data or --raw")
    dest = os.path.join(tmp, "wikitext2-bin")
    print(f"binarising {args.raw} into {dest} ...", flush=True)
    subprocess.run([console_script("fairseq-preprocess"), "--only-source", "--trainpref",
                    os.path.join(args.raw, "train.txt"), "--destdir", dest, "--workers", "2"],
                   check=True, capture_output=True)
    return dest


def bench_wikitext2(args):
    from fairseq.data import Dictionary

    from trime.lm.bm25_batches import segment_token_ids, special_token_ids

    with tempfile.TemporaryDirectory() as tmp:
        data = wikitext2_data(args, tmp)
        dictionary = Dictionary.load(os.path.join(data, "dict.txt"))
        started = time.perf_counter()
        segments = segment_token_ids(data, "train", 512, dictionary)
        load = time.perf_counter() - started
        timings = time_pipeline(segments, args.k, args.batch_size, 1, args.backend,
                                special_token_ids(dictionary))
        total = load + sum(timings.values())
        print(f"\n(a) WikiText-2 train ({data}), L = 512, k = {args.k}, backend {args.backend}: "
              f"{len(segments):,} segments, {sum(map(len, segments)):,} tokens")
        print(f"    load segments {load:.2f} s | index {timings['index']:.2f} s | retrieval + "
              f"top-k {timings['retrieval']:.2f} s | chain {timings['chain']:.2f} s | "
              f"total {total:.2f} s")
        output = os.path.join(tmp, "batches.json")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "trime.cli.bm25_batches", data, "--tokens-per-sample", "512",
                        "--k", str(args.k), "--batch-size", str(args.batch_size), "--backend",
                        args.backend, "-o", output], check=True, capture_output=True, cwd=REPO)
        print(f"    whole console script (python -m trime.cli.bm25_batches, start-up included): "
              f"{time.perf_counter() - started:.2f} s wall", flush=True)


def bench_generated(args, num_tokens):
    started = time.perf_counter()
    ids = zipf_token_ids(num_tokens, args.vocab, args.zipf_exponent, args.seed)
    L = args.tokens_per_sample
    segments = [ids[i:i + L] for i in range(0, num_tokens, L)]  # fairseq's break mode none
    generate = time.perf_counter() - started
    timings = time_pipeline(segments, args.k, args.batch_size, 1, args.backend)
    total = sum(timings.values())
    print(f"\n(b) generated Zipf(s = {args.zipf_exponent}) corpus, {num_tokens:,} tokens over "
          f"{args.vocab:,} types, L = {L}, k = {args.k}, backend {args.backend}: "
          f"{len(segments):,} segments (generated in {generate:.1f} s, not counted)")
    print(f"    index {timings['index']:.1f} s | retrieval + top-k {timings['retrieval']:.1f} s | "
          f"chain {timings['chain']:.1f} s | total {total:.1f} s ({total / 60:.2f} min)",
          flush=True)
    return len(segments), total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(REPO, "runs", "wikitext2", "bin"))
    parser.add_argument("--raw", default=os.path.join(REPO, "..", "shared", "data", "wikitext-2"))
    parser.add_argument("--tokens", type=float, default=100_000_000,
                        help="generated corpus size in tokens (default 1e8)")
    parser.add_argument("--vocab", type=int, default=267_744)
    parser.add_argument("--zipf-exponent", type=float, default=1.0)
    parser.add_argument("--tokens-per-sample", type=int, default=3072)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="matrix", choices=BACKENDS)
    parser.add_argument("--scaling", action="store_true", help="also 10M and 30M tokens")
    parser.add_argument("--skip-wikitext2", action="store_true")
    parser.add_argument("--skip-generated", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"{os.cpu_count()} CPU cores; numpy {np.__version__}", flush=True)
    if not args.skip_wikitext2:
        bench_wikitext2(args)
    if not args.skip_generated:
        sizes = [10_000_000, 30_000_000] if args.scaling else []
        results = [bench_generated(args, n) for n in sizes + [int(args.tokens)]]
        if len(results) > 1:
            n0, t0 = results[0]
            print("\nscaling (time / time at the smallest size vs (N / N_smallest)²):")
            for n, t in results:
                print(f"    {n:>7,} segments: {t:7.1f} s  x{t / t0:5.1f}  "
                      f"(N² ratio x{(n / n0) ** 2:5.1f})")


if __name__ == "__main__":
    main()
