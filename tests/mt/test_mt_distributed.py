"""trime_mt_loss --memory-across-workers with 2 gloo processes equals one process holding the
global batch (loss rtol 1e-5; parameter gradients rtol 1e-3, atol 1e-5 of the largest gradient
entry: the workers' batches are padded to other widths), and the memory does cross workers."""

import pytest
import torch

from dist_worker import run_two_workers, train_on_two_workers
from mt_dist_worker import ROWS, build, sample_of

pytestmark = pytest.mark.e2e  # two worker processes


def test_cross_worker_memory_equals_one_process_with_the_global_batch(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out.pt"
    data.mkdir()
    build(data)  # writes the dictionaries before the workers read them
    run_two_workers("mt_dist_worker.py", data, out)
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
    from parallel_toy import TINY_ARCH, binarised

    data = binarised(tmp_path, train_lines=56)
    args = [str(data), "--user-dir", trime.USER_DIR, "--task", "trime_translation", "-s", "de",
            "-t", "en", "--criterion", "trime_mt_loss", "--memory-across-workers", "--memory-topk", "4",
            *TINY_ARCH, "--batch-size", "8", "--max-epoch", "1", "--optimizer", "adam", "--lr", "1e-3",
            "--no-save", "--cpu", "--num-workers", "0", "--disable-validation"]
    outputs = train_on_two_workers(args)
    assert "num_updates 4" in outputs[0]  # 4 steps: the last one with a dummy batch on worker 1
