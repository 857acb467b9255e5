"""What the two-worker tests share (no fairseq): a free TCP port, and summing a worker's loss and
parameter gradients over the workers as data-parallel training does."""

import socket

import torch
import torch.distributed as dist


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backward_and_save(loss, model, rank, out):
    """Backpropagate, sum loss and parameter gradients over the workers (what data-parallel
    training applies), rank 0 saves them to ``out``; ends the process group."""
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    grads = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            grads[name] = p.grad
    if rank == 0:
        torch.save({"loss": total, "grads": grads}, out)
    dist.destroy_process_group()
