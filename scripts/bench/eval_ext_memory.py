"""Benchmark: fairseq-eval-lm speed with external memory and while saving a datastore (one run).

On one checkpoint and the same batches, prints tokens/s of fairseq's eval-lm loop
(``trime.lm.harness.evaluate``) for

- no memory (the plain LM);
- ``--eval-memory ext`` with K = --knn-k retrieved entries per token from an IVFPQ index
  (nprobe --knn-nprobe) and, for reference, from an exact Flat index;
- ``--eval-memory local,long,ext`` (TrimeLM_ext) with the IVFPQ index;
- ``--save-dstore`` (saving keys while scoring) without memory;

and the ratios to no memory (targets: ext with IVFPQ ≥ 0.25 on CPU; saving ≥ 0.9).
Medians of per-round ratios over --rounds alternating rounds.

The datastore must exist (fairseq-eval-lm --save-dstore); the indexes are built here in
memory (trime.extmem.index.build_index) unless index files exist (``--reuse-index``):

    fairseq-eval-lm runs/wikitext2/bin --user-dir trime --task trime_lm --gen-subset train \\
        --path runs/wikitext2/trime/checkpoint_best.pt --tokens-per-sample 512 --batch-size 8 \\
        --cpu --save-dstore runs/wikitext2/dstore_trime_train
    python scripts/bench/eval_ext_memory.py --data runs/wikitext2/bin \\
        --path runs/wikitext2/trime/checkpoint_best.pt --dstore runs/wikitext2/dstore_trime_train
"""

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--dstore", required=True, help="datastore (>= 1M keys for the target)")
    parser.add_argument("--gen-subset", default="valid")
    parser.add_argument("--tokens-per-sample", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--knn-k", type=int, default=1024)
    parser.add_argument("--knn-nprobe", type=int, default=32)
    parser.add_argument("--long-memory-size", type=int, default=12288)
    parser.add_argument("--max-batches", type=int, default=6, help="batches timed per setting")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-flat", action="store_true", help="no exact-search reference")
    parser.add_argument("--only", default=None,
                        help="comma-separated settings to time besides none, e.g. save-dstore")
    parser.add_argument("--train-size", type=int, default=262144,
                        help="keys used to train IVFPQ (FAISS wants >= 39 per list)")
    args = parser.parse_args()

    import faiss
    import torch

    logging.disable(logging.WARNING)
    from trime.lm.harness import evaluate, load_for_eval
    from trime.extmem.datastore import Datastore
    from trime.extmem.index import build_index
    from trime.extmem.retrieval import Retriever
    from trime.settings import EvalSettings

    task, model, cfg, dataset = load_for_eval(
        args.data, args.path, args.gen_subset, args.tokens_per_sample, 0, args.batch_size, True)
    datastore = Datastore.open(args.dstore, task.dictionary, model.query.dim)
    print(f"datastore: {len(datastore):,} keys of dimension {datastore.dim}")
    indexes = {}
    started = time.time()
    wanted = args.only or "IVFPQ,Flat"
    if "Flat" not in wanted:
        args.skip_flat = True
    if "IVFPQ" in wanted:
        ivfpq, info = build_index(datastore, "ip", "ivfpq", train_size=args.train_size,
                                  progress=False)
        faiss.extract_index_ivf(ivfpq).nprobe = args.knn_nprobe
        indexes["IVFPQ"] = ivfpq
        print(f"IVFPQ built in {time.time() - started:.0f} s: {info}")
    if not args.skip_flat:
        indexes["Flat"], _ = build_index(datastore, "ip", "flat", progress=False)
    retrievers = {name: Retriever(datastore, index, args.knn_k, "ip") for name, index in indexes.items()}

    ext = dict(dstore=args.dstore, knn_k=args.knn_k, knn_nprobe=args.knn_nprobe)
    settings = {
        "none": (EvalSettings(), None),
        "ext IVFPQ": (EvalSettings(eval_memory="ext", **ext), "IVFPQ"),
        "local,long,ext IVFPQ": (EvalSettings(eval_memory="local,long,ext",
                                              long_memory_size=args.long_memory_size,
                                              long_memory_reset="never", **ext), "IVFPQ"),
        "save-dstore": (None, None),
    }
    if not args.skip_flat:
        settings["ext Flat"] = (EvalSettings(eval_memory="ext", **ext), "Flat")
    if args.only:
        keep = {"none", *args.only.split(",")}
        settings = {name: value for name, value in settings.items() if name in keep}
    scratch = tempfile.mkdtemp(prefix="trime-bench-dstore-")
    speeds = {name: [] for name in settings}
    evaluate(task, model, cfg, dataset, EvalSettings(), max_batches=2)  # warm-up
    for round_ in range(args.rounds):
        for name, (setting, index_name) in settings.items():
            if setting is None:  # saving a datastore of the split while scoring without memory
                setting = EvalSettings(save_dstore=os.path.join(scratch, f"round{round_}"))
            result = evaluate(task, model, cfg, dataset, setting, max_batches=args.max_batches,
                              retriever=retrievers[index_name] if index_name else None)
            timed = result["batches"][1:]  # the first batch of a pass: FIFO empty, caches cold
            tokens, seconds = sum(n for n, _ in timed), sum(t for _, t in timed)
            speeds[name].append(tokens / seconds)
            print(f"round {round_ + 1}  {name:22s} {tokens:7d} tokens  {tokens / seconds:9.1f} tokens/s")
    shutil.rmtree(scratch, ignore_errors=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.1f}M parameters, vocabulary {len(task.dictionary)}, "
          f"L = {args.tokens_per_sample}, batch = {args.batch_size}, K = {args.knn_k}, nprobe = "
          f"{args.knn_nprobe}, device = cpu ({torch.get_num_threads()} threads)")
    targets = {"ext IVFPQ": 0.25, "save-dstore": 0.9}
    for name in settings:
        if name == "none":
            continue
        ratio = statistics.median(b / a for a, b in zip(speeds["none"], speeds[name]))
        target = targets.get(name)
        verdict = f"  (target >= {target}: {'met' if ratio >= target else 'NOT met'})" if target else ""
        print(f"tokens/s {name} / tokens/s no memory = {ratio:.3f}{verdict}")


if __name__ == "__main__":
    sys.exit(main())
