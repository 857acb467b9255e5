"""Benchmark: the chunked memory op with diagonal-aligned query chunks vs one chunk of
--memory-chunk-size (local memory, forward + backward, one run).

Local and long memory score at most ``trime.core.visibility.CAUSAL_CHUNK`` queries at a time, so a
chunk's key span ends at its last query and the triangle above the diagonal is never scored. This
times that against the same op forced to take ``--chunk-size`` queries at a time (what it did
before), interleaved, median of ``--repeats``, and prints the ratio.

    python scripts/bench/memory_chunks.py                     # B x L = 8 x 512 and 6 x 3,072, d = 128
"""

import argparse
import statistics
import time

import torch

from trime.core.memory_lse import memory_logsumexp
from trime.core.visibility import CAUSAL_CHUNK, LocalMemory


class WholeChunks(LocalMemory):
    """Local memory scored in chunks of the full --memory-chunk-size."""

    def query_chunk_size(self, chunk_size: int) -> int:
        return chunk_size


def step(queries, labels, rule, chunk_size):
    queries.grad = None
    start = time.perf_counter()
    lse_all, lse_pos = memory_logsumexp(queries, queries, labels, labels, rule, chunk_size=chunk_size)
    (lse_all.clamp(min=-1e4).sum() + lse_pos.clamp(min=-1e4).sum()).backward()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="8x512,6x3072", help="comma-separated BxL")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--chunk-size", type=int, default=1024, help="--memory-chunk-size")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"threads={torch.get_num_threads()} d={args.dim} --memory-chunk-size {args.chunk_size}, "
          f"diagonal chunks of {CAUSAL_CHUNK}")
    print(f"{'B x L':>10} {'whole chunks ms':>16} {'diagonal ms':>12} {'speed-up':>9}")
    gen = torch.Generator().manual_seed(0)
    for shape in args.shapes.split(","):
        B, L = (int(x) for x in shape.split("x"))
        queries = torch.randn(B, L, args.dim, generator=gen).requires_grad_()
        labels = torch.randint(0, 2500, (B, L), generator=gen)
        valid = torch.ones(B, L, dtype=torch.bool)
        times = {"whole": [], "diagonal": []}
        for repeat in range(args.repeats + 1):  # the first round warms up
            for name, rule in (("whole", WholeChunks(valid)), ("diagonal", LocalMemory(valid))):
                seconds = step(queries, labels, rule, args.chunk_size)
                if repeat:
                    times[name].append(seconds)
        whole, diagonal = (statistics.median(times[n]) * 1e3 for n in ("whole", "diagonal"))
        print(f"{shape:>10} {whole:>16.1f} {diagonal:>12.1f} {whole / diagonal:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
