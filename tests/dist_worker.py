"""One worker of tests/test_distributed.py: python dist_worker.py RANK WORLD PORT DATA OUT RULE.

Builds the same tiny model as the reference (same seed), takes its rows of the
global batch (worker 0: 3 rows; worker 1: 2 shorter rows), computes the TRIME loss
with --memory RULE (long, or ext keeping local memory; "-detach" adds --detach-memory)
--memory-across-workers, backpropagates and sums the loss and the parameter gradients over
workers (what data-parallel training applies).
"""

import os
import subprocess
import sys

import torch
import torch.distributed as dist

from fairseq_utils import build, write_dictionary
from workers import backward_and_save, free_port

# the user dir, loaded before the process group starts, as fairseq-train does when it parses its
# options: loaded after it, one worker in a few aborted at exit ("terminate called without an
# active exception", a thread still joinable)
import trime_fairseq  # noqa: E402,F401

ROWS = {0: slice(0, 3), 1: slice(3, 5)}
SHORT = 1  # worker 1's segments are one position shorter (a batch with a final short segment)


def global_batch(dictionary):
    """5 segments of 8 positions; docs: segments 0-2 of doc 0, 3-4 of doc 1 (shuffled rows)."""
    gen = torch.Generator().manual_seed(1)
    B, T = 5, 8
    src = torch.randint(4, len(dictionary), (B, T), generator=gen)
    target = torch.randint(4, len(dictionary), (B, T), generator=gen)
    corpus_order = torch.tensor([3, 0, 4, 1, 2])  # row r is corpus segment corpus_order[r]
    starts = corpus_order * T
    doc = (corpus_order >= 3).long()[:, None].expand(B, T).clone()
    return dict(src=src, target=target, starts=starts, doc=doc)


def sample_of(batch, rows, pad, width=None):
    src, target = batch["src"][rows].clone(), batch["target"][rows].clone()
    doc = batch["doc"][rows]
    if width is not None:
        src, target, doc = src[:, :width], target[:, :width], doc[:, :width]
    return {"id": torch.arange(src.shape[0]), "nsentences": src.shape[0],
            "ntokens": int(target.ne(pad).sum()),
            "net_input": {"src_tokens": src, "src_lengths": src.ne(pad).sum(1)},
            "target": target, "trime_doc": doc, "trime_segment_start": batch["starts"][rows]}


def build_model(data, rule, extra=()):
    """rule: long, ext, or either with "-detach" (--detach-memory)."""
    torch.manual_seed(0)
    detach = ("--detach-memory",) if rule.endswith("-detach") else ()
    rule = rule.removesuffix("-detach")
    rule_args = ("--memory", "ext", "--local-drop-prob", "0") if rule == "ext" else ("--memory", rule)
    return build(data, (*rule_args, *detach, *extra))


def run_two_workers(script, *args):
    """``python tests/SCRIPT RANK 2 PORT ARGS...`` as two processes (asserting both succeed)."""
    port = free_port()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), script)
    procs = [subprocess.Popen([sys.executable, path, str(rank), "2", str(port), *map(str, args)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"}) for rank in range(2)]
    for p in procs:
        output, _ = p.communicate(timeout=300)
        assert p.returncode == 0, output[-3000:]


def train_on_two_workers(args):
    """Outputs of ``fairseq-train ARGS`` run as 2 gloo workers on CPU (asserting both succeed)."""
    from console import console_script

    distributed = ["--ddp-backend", "legacy_ddp", "--distributed-no-spawn",
                   "--distributed-world-size", "2", "--distributed-backend", "gloo",
                   "--distributed-init-method", f"tcp://127.0.0.1:{free_port()}"]
    procs = [subprocess.Popen([console_script("fairseq-train"), *args, *distributed,
                               "--distributed-rank", str(r)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"}) for r in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    return outputs


def main(rank, world, port, data, out, rule):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    if rank == 0:  # one writer: a worker reading dict.txt while the other rewrites it would build
        write_dictionary(data)  # another vocabulary, and the collectives would not match
    dist.barrier()
    task, model, criterion = build_model(data, rule, ("--memory-across-workers",))
    model.train()
    batch = global_batch(task.dictionary)
    width = batch["src"].shape[1] - (SHORT if rank == 1 else 0)
    loss, _, _ = criterion(model, sample_of(batch, ROWS[rank], task.dictionary.pad(), width))
    backward_and_save(loss, model, rank, out)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6])
