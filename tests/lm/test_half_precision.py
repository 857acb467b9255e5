"""Half-precision models (what --fp16 / --bf16 train): both criteria sum the memory in fp32, so
the loss of a half model is fp32, finite, and close to the fp32 model's, and every gradient is
finite — with each memory rule, and with similarities that would overflow fp16 if summed there."""

import pytest
import torch

from fairseq_utils import build, build_translation, lm_sample, translation_sample, write_dictionary


def _loss(criterion, model, sample):
    torch.manual_seed(1)  # the same dropout masks
    loss, _, _ = criterion(model, sample)
    return loss


def _finite_grads(model):
    return all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("memory", [["--memory", "local"], ["--memory", "ext", "--local-drop-prob", "0"]])
def test_trime_loss_of_a_half_model(tmp_path, dtype, memory):
    d = write_dictionary(tmp_path / "data")
    rows = torch.tensor([5, 6, 7, 8])[torch.randint(4, (3, 30), generator=torch.Generator().manual_seed(0))]
    sample = lm_sample(d, rows.tolist(), pad_last=5)
    for big in (False, True):
        torch.manual_seed(0)
        _, model, criterion = build(tmp_path / "data", (), ("--criterion", "trime_loss", *memory))
        model.train()
        if big:  # g = this norm's output (post-norm); large enough that g·g' overflows fp16
            with torch.no_grad():
                model.decoder.layers[-1].self_attn_layer_norm.weight.mul_(100)
        reference = _loss(criterion, model, sample)
        model = model.to(dtype)
        captured = {}
        model.decoder.layers[-1].fc1.register_forward_pre_hook(
            lambda m, inp: captured.update(g=inp[0]))
        loss = _loss(criterion, model, sample)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        torch.testing.assert_close(loss, reference, rtol=2e-2, atol=0)
        loss.backward()
        if big:
            g = captured["g"].reshape(-1, captured["g"].shape[-1]).half()
            assert torch.isinf(g @ g.t()).any()  # summed in fp16 the scores would overflow
        # such gradients overflow fp16 itself (fairseq's loss scaler skips those steps); bf16 and
        # ordinary fp16 gradients are finite
        if dtype == torch.bfloat16 or not big:
            assert _finite_grads(model)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_trime_mt_loss_of_a_half_model(tmp_path, dtype):
    sources = [[5, 6, 7], [8, 9], [6, 6, 7, 5]]
    targets = [[10, 11, 12], [11, 13], [12, 10, 11, 11]]
    torch.manual_seed(0)
    task, model, criterion = build_translation(str(tmp_path), (), ("--criterion", "trime_mt_loss"))
    model.train()
    sample = translation_sample(task.tgt_dict, sources, targets)
    reference = _loss(criterion, model, sample)
    model = model.to(dtype)
    loss = _loss(criterion, model, sample)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert _finite_grads(model)
    torch.testing.assert_close(loss, reference, rtol=2e-2, atol=0)
