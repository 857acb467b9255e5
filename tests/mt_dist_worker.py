"""One worker of tests/mt/test_mt_distributed.py: python mt_dist_worker.py RANK WORLD PORT DATA OUT.

Builds the same tiny translation model as the reference (same seed), takes its pairs of the
global batch (worker 0: pairs 0-2; worker 1: pairs 3-4, shorter), computes trime_mt_loss with
--memory-across-workers (the authors' --memory-temp 10 --memory-topk 3 style), backpropagates
and sums the loss and the parameter gradients over workers (what data-parallel training applies).
"""

import sys

import torch
import torch.distributed as dist

from workers import backward_and_save
from fairseq_utils import build_translation, translation_sample

ROWS = {0: slice(0, 3), 1: slice(3, 5)}
OPTIONS = ["--memory-temp", "2", "--memory-topk", "3", "--memory-chunk-size", "4"]


def build(data, extra=()):
    torch.manual_seed(0)
    task, model, criterion = build_translation(data, [*OPTIONS, *extra])
    for p in model.parameters():  # a little larger than the init, so that memory matters
        p.data.mul_(2.0)
    return task, model, criterion


def global_pairs(dictionary):
    """5 pairs; the targets draw on a few ids (memory positives are common); pairs 3-4 short."""
    gen = torch.Generator().manual_seed(2)
    first = dictionary.nspecial
    lengths = (6, 5, 6, 3, 2)
    draw = lambda ids, n: [ids[i] for i in torch.randint(len(ids), (n,), generator=gen).tolist()]  # noqa: E731
    sources = [draw(list(range(first, first + 20)), n + 1) for n in lengths]
    targets = [draw(list(range(first, first + 5)), n) for n in lengths]
    return sources, targets


def sample_of(dictionary, rows):
    sources, targets = global_pairs(dictionary)
    sample = translation_sample(dictionary, sources[rows], targets[rows])
    sample["id"] = torch.arange(5)[rows]  # dataset ids: unique across workers
    return sample


def main(rank, world, port, data, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    task, model, criterion = build(data, ["--memory-across-workers"])
    model.train()
    loss, _, _ = criterion(model, sample_of(task.target_dictionary, ROWS[rank]))
    backward_and_save(loss, model, rank, out)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
