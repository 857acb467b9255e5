"""Benchmark: cost of the TRIME loss over plain cross-entropy (one run, same model and batch).

Prints, for N = B·L training tokens (= in-batch memory entries) per batch:
  * step time (forward + backward) with --criterion trime_loss (local memory)
    divided by the step time with fairseq's cross_entropy, same model, same batch;
  * peak extra memory of the memory term alone (the log-sum-exp over memory
    and its backward), chunked (trime) vs a dense whole-batch N×N version
    (what the authors' implementation materialised), each measured in a fresh
    subprocess (CPU: peak resident memory sampled every 0.5 ms; GPU:
    torch.cuda.max_memory_allocated).

Default model = the paper's 7M config (Table 9: 8 layers, d = 128, FFN 512,
4 heads, L = 3072) with a 33,278-word plain softmax (WikiText-2's vocabulary).

    python scripts/bench/loss_overhead.py                 # N = 3072, 12288, 24576 on CPU
    python scripts/bench/loss_overhead.py --device cuda --embed-dim 1024 --ffn-dim 4096 --heads 16

``--memory ext --memory-tokens M`` adds a column for a memory of M tokens (M - N of them other
workers' keys, as --memory-across-workers gathers them; simulated on one device): the TRIME step
with its memory op over N queries x N keys replaced by the same op over N x M keys (each op's
forward + backward timed alone in the same run), over the CE step (the all-gather is not timed).
"""

import argparse
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import torch

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)


def build(args, criterion):
    from fairseq import options, tasks
    from fairseq.data import Dictionary
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import trime

    data = os.path.join(tempfile.gettempdir(), f"trime-bench-dict-{args.vocab}")
    os.makedirs(data, exist_ok=True)
    if not os.path.exists(os.path.join(data, "dict.txt")):
        d = Dictionary()
        for i in range(args.vocab - len(d)):
            d.add_symbol(f"w{i}", n=args.vocab - i)
        d.save(os.path.join(data, "dict.txt"))
    extra = ["--memory", args.memory, "--memory-kernel", args.memory_kernel] \
        if criterion == "trime_loss" else []
    if args.adaptive_softmax_cutoff:
        extra += ["--adaptive-softmax-cutoff", args.adaptive_softmax_cutoff]
    argv = [data, "--user-dir", trime.USER_DIR, "--task", "trime_lm", "--criterion", criterion, *extra,
            "--arch", "transformer_lm", "--decoder-layers", str(args.layers),
            "--decoder-embed-dim", str(args.embed_dim), "--decoder-ffn-embed-dim", str(args.ffn_dim),
            "--decoder-attention-heads", str(args.heads),
            *([] if args.adaptive_softmax_cutoff else ["--share-decoder-input-output-embed"]),
            "--tokens-per-sample", str(args.seg_len), "--dropout", "0.1"]
    cfg = convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    return task, task.build_model(cfg.model), task.build_criterion(cfg.criterion)


def make_sample(vocab, batch, seg_len, device, seed=0):
    torch.manual_seed(seed)
    # skewed ids so that memory positives are common, as in text
    ranks = torch.distributions.Exponential(torch.tensor(0.002)).sample((batch, seg_len + 1))
    tokens = (4 + ranks.long().clamp(max=vocab - 5)).to(device)
    return {"net_input": {"src_tokens": tokens[:, :-1].contiguous(),
                          "src_lengths": torch.full((batch,), seg_len)},
            "target": tokens[:, 1:].contiguous(), "ntokens": batch * seg_len}


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(args, n_tokens):
    """Median step time of cross_entropy and trime_loss on the same model and batch."""
    device = args.device
    torch.manual_seed(0)
    _, model, ce = build(args, "cross_entropy")
    _, model_t, trime_loss = build(args, "trime_loss")
    model_t.load_state_dict(model.state_dict())
    model, model_t = model.to(device).train(), model_t.to(device).train()
    sample = make_sample(args.vocab, n_tokens // args.seg_len, args.seg_len, device)
    times = {"cross_entropy": [], "trime_loss": []}
    pairs = [("cross_entropy", model, ce), ("trime_loss", model_t, trime_loss)]
    for repeat in range(args.repeats + 1):  # the first round warms up
        for name, m, criterion in (pairs if repeat % 2 == 0 else pairs[::-1]):
            m.zero_grad(set_to_none=True)
            sync(device)
            start = time.perf_counter()
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=args.bf16):
                loss, _, _ = criterion(m, sample)
            loss.backward()
            sync(device)
            if repeat > 0:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def time_memory_op(args, n_tokens, memory_tokens):
    """Median forward + backward time of the memory op alone: N queries (the first N keys) x M
    keys under the ext rule, fp32 accumulation, the bench's kernel."""
    from trime.core.memory_lse import memory_logsumexp
    from trime.core.visibility import ExtMemory

    device, d, L = args.device, args.embed_dim, args.seg_len
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    keys = torch.randn(1, memory_tokens, d, device=device, dtype=dtype, generator=gen)
    labels = torch.randint(4, 1000, (1, memory_tokens), device=device, generator=gen)
    rule = ExtMemory(torch.ones_like(labels, dtype=torch.bool),
                     (torch.arange(memory_tokens, device=device) // L)[None],
                     torch.arange(n_tokens, device=device))
    own = keys[:, :n_tokens].clone().requires_grad_()
    others = keys[:, n_tokens:].clone().requires_grad_()
    times = []
    for repeat in range(args.repeats + 1):
        sync(device)
        start = time.perf_counter()
        memory = torch.cat([own, others], 1)
        lse_all, lse_pos = memory_logsumexp(own, memory, labels, labels[:, :n_tokens], rule,
                                            chunk_size=1024, kernel=args.memory_kernel)
        (lse_all.sum() + lse_pos.clamp(min=-1e3).sum()).backward()
        sync(device)
        if repeat > 0:
            times.append(time.perf_counter() - start)
        own.grad = others.grad = None
    return statistics.median(times)


class RssPeak:
    """Peak resident memory above the level at start, sampled by a background thread."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self.rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.0005)

    def stop(self):
        self.running = False
        self.thread.join()
        return max(self.peak, self.rss()) - self.start


def memory_child(args):
    """Run in a subprocess: peak extra memory (bytes) of the memory term for one N."""
    from trime.core.memory_lse import memory_logsumexp
    from trime.core.visibility import LocalMemory

    device, n, d, L = args.device, args.child_n, args.embed_dim, args.seg_len
    torch.manual_seed(0)
    g = torch.randn(n // L, L, d, device=device, requires_grad=True)
    labels = torch.randint(4, 1000, (n // L, L), device=device)
    valid = torch.ones_like(labels, dtype=torch.bool)
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.max_memory_allocated()
    else:
        sampler = RssPeak()
    if args.child_kind == "trime":
        lse_all, lse_pos = memory_logsumexp(g, g, labels, labels, LocalMemory(valid),
                                            kernel=args.memory_kernel)
    else:  # dense: all N×N scores of the batch with an additive mask, autograd keeps them
        flat, flat_labels = g.reshape(n, d), labels.reshape(n)
        segment = torch.arange(n, device=device) // L
        position = torch.arange(n, device=device)
        visible = (segment[:, None] == segment[None, :]) & (position[None, :] < position[:, None])
        scores = flat @ flat.t() / math.sqrt(d) + (~visible).float() * -1e4
        positive = visible & (flat_labels[None, :] == flat_labels[:, None])
        lse_all = scores.logsumexp(-1)
        lse_pos = (scores + (~positive).float() * -1e4).logsumexp(-1)
    (lse_all.sum() + lse_pos.clamp(min=-1e3).sum()).backward()
    sync(device)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = sampler.stop()
    print(json.dumps({"peak_bytes": peak}))


def _available_bytes():
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def measure_memory(args, n, kind):
    if kind == "dense" and args.device == "cpu" and 6 * 4 * n * n > 0.6 * _available_bytes():
        return None  # would not fit: about six N×N fp32 tensors
    cmd = [sys.executable, __file__, "--child-n", str(n), "--child-kind", kind,
           "--device", args.device, "--embed-dim", str(args.embed_dim), "--seg-len", str(args.seg_len),
           "--memory-kernel", args.memory_kernel]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return None  # e.g. out of memory for the dense version
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="3072,12288,24576",
                        help="N values (tokens per batch = memory entries), multiples of --seg-len")
    parser.add_argument("--seg-len", type=int, default=3072, help="segment length L")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--ffn-dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=33278)
    parser.add_argument("--adaptive-softmax-cutoff", default=None,
                        help="e.g. 20000,60000 with --vocab 267744 (the WikiText-103 247M model)")
    parser.add_argument("--memory", default="local", choices=["local", "long", "ext"],
                        help="trime_loss's --memory for the step timing")
    parser.add_argument("--memory-kernel", default="auto", choices=["auto", "chunked", "fused"])
    parser.add_argument("--memory-tokens", default=None,
                        help="comma-separated M values (>= every N): the ext memory op over M keys")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per loss (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--skip-dense", action="store_true", help="skip the dense N×N memory run")
    parser.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-kind", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_n:
        return memory_child(args)

    print(f"device={args.device} threads={torch.get_num_threads()} model: {args.layers} layers, "
          f"d={args.embed_dim}, FFN {args.ffn_dim}, vocab {args.vocab}, L={args.seg_len}, "
          f"memory {args.memory}, kernel {args.memory_kernel}{', bf16' if args.bf16 else ''}")
    memory_tokens = [int(x) for x in args.memory_tokens.split(",")] if args.memory_tokens else []
    header = (f"{'N':>7} {'CE step s':>10} {'TRIME step s':>13} {'ratio':>7} "
              f"{'mem-term MiB (trime)':>21} {'(dense NxN)':>12}"
              + "".join(f" {'ratio M=' + str(m):>16}" for m in memory_tokens))
    print(header)
    for n in [int(x) for x in args.sizes.split(",")]:
        if n % args.seg_len:
            raise SystemExit(f"--sizes: {n} is not a multiple of --seg-len {args.seg_len}")
        times = time_steps(args, n)
        chunked = measure_memory(args, n, "trime")
        dense = None if args.skip_dense else measure_memory(args, n, "dense")
        fmt = lambda b: "n/a" if b is None else f"{b / 2**20:.1f}"  # noqa: E731
        in_batch_op = time_memory_op(args, n, n) if memory_tokens else 0.0
        at_m = [(times["trime_loss"] - in_batch_op + time_memory_op(args, n, m)) / times["cross_entropy"]
                for m in memory_tokens]
        print(f"{n:>7} {times['cross_entropy']:>10.3f} {times['trime_loss']:>13.3f} "
              f"{times['trime_loss'] / times['cross_entropy']:>7.3f} {fmt(chunked):>21} {fmt(dense):>12}"
              + "".join(f" {r:>16.3f}" for r in at_m), flush=True)


if __name__ == "__main__":
    main()
