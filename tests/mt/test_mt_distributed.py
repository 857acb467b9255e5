"""trime_mt_loss --memory-across-workers with 2 gloo processes equals one process holding the
global batch (loss rtol 1e-5; parameter gradients rtol 1e-3, atol 1e-5 of the largest gradient
entry: the workers' batches are padded to other widths), and the memory does cross workers."""

import os
import socket
import subprocess
import sys

import pytest
import torch

from mt_dist_worker import ROWS, build, sample_of

pytestmark = pytest.mark.e2e  # two worker processes

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cross_worker_memory_equals_one_process_with_the_global_batch(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out.pt"
    data.mkdir()
    build(data)  # writes the dictionaries before the workers read them
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, os.path.join(TESTS, "mt_dist_worker.py"), str(rank),
                               "2", str(port), str(data), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
             for rank in range(2)]
    for p in procs:
        output, _ = p.communicate(timeout=300)
        assert p.returncode == 0, output[-3000:]
    result = torch.load(out)

    task, model, criterion = build(data)
    model.train()
    dictionary = task.target_dictionary
    loss, _, _ = criterion(model, sample_of(dictionary, slice(0, 5)))
    loss.backward()
    assert torch.allclose(result["loss"], loss.detach(), rtol=1e-5), (result["loss"], loss)
    # a key bias's gradient is zero up to rounding (softmax ignores it): tolerances on the scale
    # of the model's largest gradient entry
    scale = max(float(p.grad.abs().max()) for p in model.parameters() if p.grad is not None)
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(result["grads"][name], p.grad, rtol=1e-3, atol=1e-5 * scale), name
    own_only = sum(criterion(model, sample_of(dictionary, rows))[0].item() for rows in ROWS.values())
    assert abs(own_only - loss.item()) > 1e-3  # without the other worker's pairs it differs


def test_fairseq_train_two_cpu_workers_with_cross_worker_memory(tmp_path):
    """fairseq-train, 2 gloo processes; 7 batches per epoch, so worker 1 ends on fairseq's
    dummy batch (it must join the collectives without adding memory)."""
    import trime
    from console import console_script
    from parallel_toy import TINY_ARCH, binarised

    data = binarised(tmp_path, train_lines=56)
    port = _free_port()
    args = [str(data), "--user-dir", trime.USER_DIR, "--task", "trime_translation", "-s", "de",
            "-t", "en", "--criterion", "trime_mt_loss", "--memory-across-workers", "--memory-topk", "4",
            *TINY_ARCH, "--batch-size", "8", "--max-epoch", "1", "--optimizer", "adam", "--lr", "1e-3",
            "--no-save", "--cpu", "--num-workers", "0", "--ddp-backend", "legacy_ddp",
            "--distributed-no-spawn", "--distributed-world-size", "2", "--distributed-backend", "gloo",
            "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--disable-validation"]
    procs = [subprocess.Popen([console_script("fairseq-train"), *args, "--distributed-rank", str(r)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"}) for r in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    assert "num_updates 4" in outputs[0]  # 4 steps: the last one with a dummy batch on worker 1
