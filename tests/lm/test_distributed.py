"""Cross-worker memory with 2 gloo processes equals one process holding the global batch."""

import pytest
import torch

import trime

pytest.importorskip("fairseq")

from dist_worker import (ROWS, SHORT, build_model, global_batch, run_two_workers,  # noqa: E402
                         sample_of, train_on_two_workers)
from fairseq_utils import write_dictionary  # noqa: E402

pytestmark = pytest.mark.e2e  # fairseq console scripts end to end


@pytest.mark.parametrize("rule", ["long", "ext", "ext-detach"])
def test_cross_worker_memory_equals_one_process_with_the_global_batch(tmp_path, rule):
    data = tmp_path / "data"
    run_two_workers("dist_worker.py", data, tmp_path / "out.pt", rule)
    result = torch.load(tmp_path / "out.pt")

    dictionary = write_dictionary(data)
    task, model, criterion = build_model(data, rule)
    model.train()
    batch = global_batch(dictionary)
    pad = dictionary.pad()
    # the global batch: worker 1's rows lack their last position (padding here)
    batch["target"][ROWS[1], -SHORT:] = pad
    batch["src"][ROWS[1], -SHORT:] = pad
    loss, _, _ = criterion(model, sample_of(batch, slice(0, 5), pad))
    loss.backward()
    assert torch.allclose(result["loss"], loss.detach(), rtol=1e-5), (result["loss"], loss)
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(result["grads"][name], p.grad, rtol=1e-4, atol=1e-6), name

    # and the memory did cross workers: without it, the loss differs
    own_only = 0.0
    for rank, rows in ROWS.items():
        width = batch["src"].shape[1] - (SHORT if rank == 1 else 0)
        own_only += criterion(model, sample_of(batch, rows, pad, width))[0].item()
    assert abs(own_only - loss.item()) > 1e-3


def test_fairseq_train_two_cpu_workers_with_cross_worker_memory(tmp_path):
    """fairseq-train, 2 gloo processes; 7 batches per epoch, so worker 1 ends on fairseq's
    dummy batch (it must join the collectives without adding memory)."""
    from console import preprocess
    from trime.cli.toy_corpus import write_splits

    write_splits(tmp_path / "raw", train_stories=7, valid_stories=2, test_stories=2)
    preprocess(tmp_path / "raw", tmp_path / "bin")
    args = [str(tmp_path / "bin"), "--user-dir", trime.USER_DIR,
            "--task", "trime_lm", "--criterion", "trime_loss", "--memory", "long",
            "--memory-across-workers", "--batching", "consecutive", "--consecutive-segments", "2",
            "--doc-boundary", "empty-line", "--arch", "transformer_lm", "--decoder-layers", "1",
            "--decoder-embed-dim", "16", "--decoder-ffn-embed-dim", "32",
            "--decoder-attention-heads", "2", "--tokens-per-sample", "32", "--batch-size", "4",
            "--max-epoch", "1", "--optimizer", "adam", "--lr", "1e-3", "--no-save", "--cpu",
            "--num-workers", "0"]
    outputs = train_on_two_workers(args)
    assert "num_updates 4" in outputs[0]  # 4 steps: the last one with a dummy batch on worker 1
