"""One worker of tests/hf/test_hf_distributed.py: python hf_dist_worker.py RANK WORLD PORT OUT MEMORY.

Builds the same tiny GPT-2 as the reference (same seed), takes its rows of the global batch
(worker 0: 3 rows, worker 1: 2 rows), computes trime.hf.TrimeLoss with memory MEMORY (long, or
ext keeping local memory) and memory_across_workers, backpropagates the summed loss and sums the
loss and the parameter gradients over the workers (what data-parallel training applies).
No fairseq: plain torch.distributed (gloo).
"""

import os
import subprocess
import sys

import torch
import torch.distributed as dist

from workers import backward_and_save, free_port

ROWS = {0: slice(0, 3), 1: slice(3, 5)}


def global_batch(T=6, V=23):
    """5 segments; rows 0, 1, 4 are consecutive segments of document 0, rows 2, 3 of document 1
    (rows not in corpus order)."""
    generator = torch.Generator().manual_seed(5)
    input_ids = torch.randint(3, V, (5, T), generator=generator)
    corpus_order = torch.tensor([1, 0, 3, 4, 2])  # row r is corpus segment corpus_order[r]
    doc_ids = torch.tensor([0, 0, 1, 1, 0])
    return {"input_ids": input_ids, "labels": input_ids.clone(), "doc_ids": doc_ids,
            "segment_starts": corpus_order * T}


def rows_of(batch, rows):
    return {name: value[rows] for name, value in batch.items()}


def run_two_workers(out, memory):
    port = free_port()
    path = os.path.abspath(__file__)
    procs = [subprocess.Popen([sys.executable, path, str(rank), "2", str(port), str(out), memory],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"}) for rank in range(2)]
    for p in procs:
        output, _ = p.communicate(timeout=300)
        assert p.returncode == 0, output[-3000:]


def main(rank, world, port, out, memory):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf"))
    from test_hf_loss import tiny_model

    from trime.hf import TrimeLoss

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = tiny_model("gpt2")
    model.train()
    options = {"local_drop_prob": 0.0} if memory == "ext" else {}
    out_loss = TrimeLoss(model, memory, memory_across_workers=True, kernel="chunked", **options)(
        **rows_of(global_batch(), ROWS[rank]))
    backward_and_save(out_loss.loss * out_loss.num_tokens, model, rank, out)

if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
