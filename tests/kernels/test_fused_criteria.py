"""--memory-kernel fused in the criteria: the same loss and parameter gradients as chunked
(trime_loss with local / long-free ext memory, trime_mt_loss), and a clear error where the fused
kernel cannot run. Triton's CPU interpreter runs the kernel."""

import os

import pytest
import torch

from fairseq_utils import build, build_translation, lm_sample, translation_sample, write_dictionary

os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")


def _loss_and_grads(criterion, model, sample):
    model.zero_grad()
    loss, _, _ = criterion(model, sample)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _same(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("memory", [["--memory", "local"],
                                    ["--memory", "ext", "--local-drop-prob", "0"]])
def test_trime_loss_fused_equals_chunked(tmp_path, memory):
    d = write_dictionary(tmp_path / "data")
    gen = torch.Generator().manual_seed(0)
    rows = torch.tensor([5, 6, 7, 8])[torch.randint(4, (3, 70), generator=gen)].tolist()
    sample = lm_sample(d, rows, pad_last=5)  # 69 positions: one full block and a partial one
    results = {}
    for kernel in ("chunked", "fused"):
        torch.manual_seed(0)
        _, model, criterion = build(tmp_path / "data", ["--memory-kernel", kernel],
                                    ("--criterion", "trime_loss", *memory))
        model.train()
        results[kernel] = _loss_and_grads(criterion, model, sample)
    _same(results["chunked"], results["fused"])


def test_trime_mt_loss_fused_equals_chunked_and_refuses_top_k(tmp_path):
    sources = [[5, 6, 7], [8, 9], [6, 6, 7, 5]]
    targets = [[10, 11, 12], [11, 13], [12, 10, 11, 11]]
    results = {}
    for kernel in ("chunked", "fused"):
        torch.manual_seed(0)
        task, model, criterion = build_translation(
            str(tmp_path), ["--memory-kernel", kernel],
            ("--criterion", "trime_mt_loss", "--memory-temp", "10"))
        model.train()
        sample = translation_sample(task.tgt_dict, sources, targets)
        results[kernel] = _loss_and_grads(criterion, model, sample)
    _same(results["chunked"], results["fused"])
    _, model, criterion = build_translation(
        str(tmp_path), ["--memory-kernel", "fused"],
        ("--criterion", "trime_mt_loss", "--memory-topk", "2"))
    with pytest.raises(ValueError, match="--memory-kernel fused cannot run here: a top-k memory"):
        criterion(model, translation_sample(task.tgt_dict, sources, targets))
