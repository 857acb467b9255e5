"""Benchmark (GPU): ext-memory evaluation speed over a large synthetic datastore ÷ no memory.

A randomly initialised model of the WikiText-103 247M shape scores batches of tokens (log p of
each target, fp16) with and without kNN-LM memory: K = --knn-k entries per token retrieved from a
GPU IVFPQ index (faiss-gpu, fp16 lookup tables) over --keys random keys, then p_kNN of the
target mixed in. Prints tokens/s of both and the ratio (target >= 0.5 at >= 10M keys). The keys
are random: the index's work per query (lists probed, codes scanned, top-K kept) is what a real
datastore of that size costs; its answers are meaningless.

    python scripts/gpu/ext_eval_bench.py                    # 10M keys, K = 1,024
"""

import argparse
import statistics
import sys
import time

import numpy as np
import torch


def build_model(args):
    import os
    import tempfile

    from fairseq import options, tasks
    from fairseq.data import Dictionary
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    data = tempfile.mkdtemp(prefix="trime-bench-")
    dictionary = Dictionary()
    for i in range(args.vocab - len(dictionary)):
        dictionary.add_symbol(f"w{i}", n=args.vocab - i)
    dictionary.save(os.path.join(data, "dict.txt"))
    argv = [data, "--task", "language_modeling", "--arch", "transformer_lm",
            "--decoder-layers", str(args.layers), "--decoder-embed-dim", "1024",
            "--decoder-ffn-embed-dim", "4096", "--decoder-input-dim", "1024",
            "--decoder-output-dim", "1024", "--decoder-attention-heads", "16",
            "--adaptive-softmax-cutoff", "20000,60000", "--tokens-per-sample", str(args.seg_len)]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    return task.build_model(cfg.model).cuda().half().eval()


def build_index(args):
    import faiss

    from trime.extmem.retrieval import faiss_to_gpu

    d = 1024
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFPQ(quantizer, d, args.nlist, 64, 8, faiss.METRIC_INNER_PRODUCT)
    gpu, resources = faiss_to_gpu(index, torch.device("cuda"))
    rng = np.random.default_rng(0)
    started = time.time()
    gpu.train(rng.standard_normal((max(40 * args.nlist, 65536), d), dtype=np.float32))
    for start in range(0, args.keys, 1 << 20):
        n = min(1 << 20, args.keys - start)
        gpu.add(torch.randn(n, d, device="cuda"))
    faiss.GpuParameterSpace().set_index_parameter(gpu, "nprobe", args.nprobe)
    print(f"GPU IVFPQ: {gpu.ntotal:,} keys, {args.nlist} lists, nprobe {args.nprobe}, built in "
          f"{time.time() - started:.0f} s", flush=True)
    return gpu, resources


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=10_000_000)
    parser.add_argument("--knn-k", type=int, default=1024)
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=267744)
    parser.add_argument("--seg-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import faiss.contrib.torch_utils  # noqa: F401  torch tensors in index.search

    model = build_model(args)
    index, _resources = build_index(args)
    labels = torch.randint(4, args.vocab, (args.keys,), device="cuda", dtype=torch.int32)
    tokens = torch.randint(4, args.vocab, (args.batch, args.seg_len + 1), device="cuda")
    src, target = tokens[:, :-1], tokens[:, 1:]
    captured = {}
    model.decoder.layers[-1].fc1.register_forward_pre_hook(lambda m, inp: captured.update(g=inp[0]))

    def score(with_memory):
        with torch.no_grad():
            features, _ = model.decoder(src, features_only=True)
            log_probs = model.decoder.adaptive_softmax.get_log_prob(features, None)
            lm = log_probs.gather(-1, target[..., None]).squeeze(-1).float()
            if not with_memory:
                return lm
            queries = captured["g"].transpose(0, 1).reshape(-1, 1024).float()
            sims, rows = index.search(queries, args.knn_k)
            hit = labels[rows.clamp(min=0).long()] == target.reshape(-1, 1)
            weights = torch.softmax(sims.float() / 1024 ** 0.5, -1)
            p_knn = (weights * hit).sum(-1).view_as(lm)
            return torch.logaddexp(lm + np.log(0.75), (p_knn + 1e-30).log() + np.log(0.25))

    ratios = []
    for round_ in range(args.rounds + 1):  # the first round warms up
        seconds = {}
        for with_memory in (False, True):
            torch.cuda.synchronize()
            started = time.perf_counter()
            score(with_memory)
            torch.cuda.synchronize()
            seconds[with_memory] = time.perf_counter() - started
        if round_:
            ratios.append(seconds[False] / seconds[True])
            n = src.numel()
            print(f"round {round_}: no memory {n / seconds[False]:,.0f} tokens/s, ext K = "
                  f"{args.knn_k} {n / seconds[True]:,.0f} tokens/s", flush=True)
    ratio = statistics.median(ratios)
    print(f"tokens/s ext ({args.keys:,} keys, K = {args.knn_k}) / no memory = {ratio:.3f} "
          f"(target >= 0.5: {'met' if ratio >= 0.5 else 'NOT met'})")


if __name__ == "__main__":
    sys.exit(main())
