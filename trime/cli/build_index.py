"""`trime-build-index`: a FAISS index over a datastore (``trime.extmem.index``)."""

import argparse
import json
import logging

from trime.cli.parsing import HelpFormatter
from trime.errors import console_script
from trime.extmem.datastore import Datastore
from trime.extmem.index import (FLAT_UP_TO, INDEX_TYPES, METRICS, PQ_BITS, build_index,
                                gpu_available, save_index)

logger = logging.getLogger("trime.build_index")


@console_script
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="trime-build-index",
        description="Build a FAISS index over a trime datastore (fairseq-eval-lm --save-dstore DIR), "
                    "for evaluation with external memory (fairseq-eval-lm --eval-memory ...,ext "
                    "--dstore DIR). Written into DIR as index.{metric}.faiss.",
        formatter_class=HelpFormatter)
    parser.add_argument("dstore", help="datastore folder (from fairseq-eval-lm --save-dstore)")
    parser.add_argument("--metric", choices=METRICS, default="ip",
                        help="similarity searched: ip = inner product (TRIME's sim, Eq. 6), l2 = "
                             "squared Euclidean distance (kNN-LM); must match --knn-sim at evaluation")
    parser.add_argument("--index-type", choices=INDEX_TYPES, default="auto",
                        help=f"flat = exact search (memory 4·N·d bytes, search time linear in N); "
                             f"ivfpq = approximate (inverted lists + product quantisation, as in "
                             f"kNN-LM); auto = flat up to {FLAT_UP_TO:,} keys, ivfpq above")
    parser.add_argument("--nlist", type=int, default=None,
                        help="IVFPQ inverted lists (default: about 4·sqrt(N), a power of two in "
                             "[64, 4096]; the paper used 4,096 for 100M keys)")
    parser.add_argument("--pq-m", type=int, default=None,
                        help="IVFPQ sub-quantisers per code (default: the largest divisor of d up "
                             "to 64; the paper used 64 with 8 bits = 64-byte codes)")
    parser.add_argument("--pq-bits", type=int, default=None, choices=PQ_BITS,
                        help="bits per IVFPQ sub-quantiser code: 4 = FAISS fast scan (SIMD, CPU "
                             "only, faster search), 8 = classic IVFPQ (the paper's 64-byte codes "
                             "with --pq-m 64; FAISS's GPU IVFPQ needs it). Default: 4 when built "
                             "on CPU, 8 on GPU")
    parser.add_argument("--train-size", type=int, default=1_000_000,
                        help="random keys used to train IVFPQ (the paper used 1M)")
    parser.add_argument("--add-chunk", type=int, default=500_000, help="keys added per step")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="where to train and fill the index: gpu needs faiss-gpu (pip install "
                             "trime[gpu]) and a GPU; auto = gpu when available, else cpu")
    parser.add_argument("--seed", type=int, default=1, help="seed of the training sample")
    parser.add_argument("--checkpoint-keys", type=int, default=10_000_000,
                        help="IVFPQ: the trained index is kept, and the partly filled one every "
                             "this many keys added, so that the same command run again after an "
                             "interruption continues from there")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO)
    for name in ("nlist", "pq_m", "train_size", "add_chunk", "checkpoint_keys"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    datastore = Datastore.open(args.dstore)  # its errors name the fix (one line: console_script)
    use_gpu = args.device == "gpu" or (args.device == "auto" and gpu_available())
    if args.device == "gpu" and not gpu_available():
        parser.error("--device gpu: no GPU FAISS here (install trime[gpu] on a machine with a GPU) "
                     "- use --device cpu")
    if args.pq_bits == 4 and use_gpu:
        parser.error("--pq-bits 4 uses FAISS's fast scan, which runs on CPU only: drop --pq-bits "
                     "(8 on GPU) or pass --device cpu")
    logger.info(f"datastore {datastore.path}: {len(datastore)} keys of dimension {datastore.dim}; "
                f"building on {'GPU' if use_gpu else 'CPU'}"
                + ("" if use_gpu or args.device == "cpu" else " (no GPU FAISS found)"))
    index, info = build_index(datastore, args.metric, args.index_type, args.nlist, args.pq_m,
                              args.pq_bits, args.train_size, args.add_chunk, use_gpu, args.seed,
                              resume=True, checkpoint_keys=args.checkpoint_keys)
    path = save_index(index, info, datastore.path)
    logger.info(f"index written to {path}: {json.dumps(info)}")


if __name__ == "__main__":
    main()
