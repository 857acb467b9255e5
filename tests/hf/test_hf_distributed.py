"""trime.hf.TrimeLoss(memory_across_workers=True) on two gloo workers (CPU) equals one process
holding the global batch: the summed loss and every parameter's summed gradient."""

import pytest
import torch

pytest.importorskip("transformers")

from hf_dist_worker import global_batch, run_two_workers  # noqa: E402
from test_hf_loss import tiny_model  # noqa: E402
from trime.hf import TrimeLoss  # noqa: E402

pytestmark = pytest.mark.e2e  # two worker processes


@pytest.mark.parametrize("memory", ["long", "ext"])
def test_two_workers_equal_one_process_with_the_global_batch(tmp_path, memory):
    out = tmp_path / "workers.pt"
    run_two_workers(out, memory)
    workers = torch.load(out)
    model = tiny_model("gpt2")
    model.train()
    options = {"local_drop_prob": 0.0} if memory == "ext" else {}
    result = TrimeLoss(model, memory, kernel="chunked", **options)(**global_batch())
    reference = result.loss * result.num_tokens
    reference.backward()
    assert torch.allclose(workers["loss"], reference.detach(), rtol=1e-6)
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == workers["grads"].keys()
    for name, grad in grads.items():
        assert (workers["grads"][name] - grad).abs().max() <= 1e-5 * grad.abs().max() + 1e-9, name
