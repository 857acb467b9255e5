"""``trime_loss`` on real fairseq models vs the naive Eq. 5 reference (loss and parameter grads).

The reference gets g(c) from its own hook on the last fc1, the vocabulary
distribution from fairseq's own full log-probabilities, and builds Eq. 5 word
by word (tests/naive.py). Tolerances: fp32 model, loss rtol 1e-5, grads
rtol 1e-3 / atol 1e-6 (the reference sums in float64, the criterion in fp32).
"""

import pytest
import torch

from fairseq_utils import ADAPTIVE, build, lm_sample, write_dictionary
from naive import adaptive_vocab_scores, naive_trime_loss


def _naive_loss(model, sample, pad):
    captured = {}
    fc1 = model.decoder.layers[-1].fc1
    handle = fc1.register_forward_pre_hook(lambda m, inp: captured.update(g=inp[0]))
    decoder_out = model.decoder(sample["net_input"]["src_tokens"])
    handle.remove()
    g = captured["g"].transpose(0, 1)
    asm = model.decoder.adaptive_softmax
    if asm is None:
        scores = decoder_out[0].double()  # logits
    else:
        scores = adaptive_vocab_scores(asm, decoder_out[0])
        with torch.no_grad():  # the reference's adaptive distribution is fairseq's
            fairseq_log_probs = asm.get_log_prob(decoder_out[0].contiguous(), None).double()
            assert torch.allclose(scores.log_softmax(-1), fairseq_log_probs, atol=1e-5)
    return naive_trime_loss(scores, g, sample["target"], pad)


def _naive_loss_with_memory(model, sample, pad, sees, detach_keys=False):
    """The naive Eq. 5 (float64) over explicit memory lists: position t of segment s sees key j of
    segment s2 when sees(s, t, s2, j) (and the key has a real label)."""
    from naive import naive_loss_over_memory

    captured = {}
    handle = model.decoder.layers[-1].fc1.register_forward_pre_hook(
        lambda m, inp: captured.update(g=inp[0]))
    scores = model.decoder(sample["net_input"]["src_tokens"])[0].double()
    handle.remove()
    g = captured["g"].transpose(0, 1)
    target = sample["target"]
    B, T = target.shape
    valid = (target != pad).tolist()
    memory = [[[(s2, j) for s2 in range(B) for j in range(T) if valid[s2][j] and sees(s, t, s2, j)]
               for t in range(T)] for s in range(B)]
    return naive_loss_over_memory(scores, g, target, memory, pad, detach_keys=detach_keys)


def _rows(seed, vocab_ids, B=3, T=13):
    gen = torch.Generator().manual_seed(seed)
    # draw from a few ids so that memory positives are common
    choice = torch.tensor(vocab_ids)[torch.randint(len(vocab_ids), (B, T), generator=gen)]
    return choice.tolist()


@pytest.mark.parametrize("adaptive", [False, True], ids=["softmax", "adaptive"])
@pytest.mark.parametrize("positives", [True, False], ids=["with-positives", "no-positives"])
def test_criterion_matches_naive_eq5(tmp_path, adaptive, positives):
    d = write_dictionary(tmp_path / "data")
    task, model, criterion = build(tmp_path / "data", ADAPTIVE if adaptive else ())
    if adaptive:
        assert model.decoder.adaptive_softmax is not None
    torch.manual_seed(0)
    if positives:
        # ids 5 (head), 14 (tail 1), 15 = cutoff 10 + pad index 1 inside tail 1:
        # the word fairseq's adaptive_loss silently skips
        rows = _rows(1, [5, 6, 14, 15, 26, 37])
    else:
        rows = [list(range(4 + 13 * b, 4 + 13 * b + 13)) for b in range(3)]  # all distinct
    sample = lm_sample(d, rows, pad_last=3)
    model.train()

    loss, sample_size, log = criterion(model, sample)
    loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref = _naive_loss(model, sample, d.pad())
    ref.backward()

    assert sample_size == sample["ntokens"] == 3 * 12 - 3
    assert torch.allclose(loss.double(), ref, rtol=1e-5), (loss.item(), ref.item())
    assert set(ours) == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        assert torch.allclose(ours[name], p.grad, rtol=1e-3, atol=1e-6), name
    # lm_loss is the true vocabulary NLL; memory changes the loss
    assert not torch.isclose(log["lm_loss"], loss.detach())


def test_chunked_and_unchunked_criterion_agree(tmp_path):
    d = write_dictionary(tmp_path / "data")
    sample = lm_sample(d, _rows(2, [5, 6, 14, 15]), pad_last=2)
    results = []
    for chunk in ("1", "5", "4096"):
        torch.manual_seed(0)
        task, model, criterion = build(tmp_path / "data", ("--memory-chunk-size", chunk))
        loss, _, _ = criterion(model, sample)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    for loss, grads in results[1:]:
        assert torch.allclose(loss, results[0][0], rtol=1e-6)
        for a, b in zip(grads, results[0][1]):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()


def test_ce_warmup_uses_plain_lm_loss(tmp_path):
    d = write_dictionary(tmp_path / "data")
    sample = lm_sample(d, _rows(3, [5, 6, 14]))
    torch.manual_seed(0)
    task, model, criterion = build(tmp_path / "data", ("--ce-warmup-updates", "10"))
    model.train()
    criterion.set_num_updates(9)
    loss, _, log = criterion(model, sample)
    assert torch.equal(loss.detach(), log["lm_loss"])
    # plain LM loss == fairseq's own cross-entropy on a plain softmax
    ce, _, _ = build(tmp_path / "data", (), ("--criterion", "cross_entropy"))[2](model, sample)
    assert torch.allclose(loss, ce, rtol=1e-5)
    criterion.set_num_updates(10)
    loss_after, _, log = criterion(model, sample)
    assert loss_after < log["lm_loss"]  # memory positives help a random model
    model.eval()
    criterion.set_num_updates(0)  # validation always reports the TRIME loss
    loss_valid, _, _ = criterion(model, sample)
    assert torch.allclose(loss_valid, loss_after, rtol=1e-5)


def test_bf16_model_loss_close_to_fp32(tmp_path):
    d = write_dictionary(tmp_path / "data")
    sample = lm_sample(d, _rows(4, [5, 6, 14, 15]))
    torch.manual_seed(0)
    task, model, criterion = build(tmp_path / "data")
    model.eval()
    loss32, _, _ = criterion(model, sample)
    loss16, _, _ = criterion(model.to(torch.bfloat16), sample)
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16)
    # bf16 activations: documented tolerance 2e-2 relative on the summed loss
    assert torch.allclose(loss16, loss32, rtol=2e-2)


@pytest.mark.parametrize("drop,training,keeps_local", [
    ("1.0", True, False), ("0.0", True, True), ("1.0", False, True)])
def test_ext_memory_and_local_drop_match_naive(tmp_path, drop, training, keeps_local):
    """--memory ext: every token of the other segments + (unless dropped; never at validation)
    the earlier tokens of the own segment; loss and parameter gradients vs explicit lists."""
    d = write_dictionary(tmp_path / "data")
    torch.manual_seed(0)
    task, model, criterion = build(tmp_path / "data", ("--memory", "ext", "--local-drop-prob", drop))
    sample = lm_sample(d, _rows(2, [5, 6, 7, 8, 9]), pad_last=3)
    model.train(training)
    loss, _, _ = criterion(model, sample)
    loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    ref = _naive_loss_with_memory(model, sample, d.pad(),
                                  lambda s, t, s2, j: s2 != s or (keeps_local and j < t))
    ref.backward()
    assert torch.allclose(loss.double(), ref, rtol=1e-5), (loss, ref)
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(ours[name].double(), p.grad.double(), rtol=1e-3, atol=1e-6), name


@pytest.mark.parametrize("rule", ["local", "ext"])
def test_detach_memory_gradients_match_naive_with_constant_keys(tmp_path, rule):
    """--detach-memory (Table 11, "w/o back-prop to memory"): the same loss, and parameter
    gradients equal to the naive Eq. 5 whose memory keys are constants; they differ from the
    gradients with back-prop to memory."""
    d = write_dictionary(tmp_path / "data")
    sample = lm_sample(d, _rows(2, [5, 6, 7, 8, 9, 5, 6]), pad_last=2)
    extra = ("--memory", rule) + (("--local-drop-prob", "0.0") if rule == "ext" else ())
    grads, losses = {}, {}
    for detach in (False, True):
        torch.manual_seed(0)
        task, model, criterion = build(tmp_path / "data", extra + (("--detach-memory",) if detach else ()))
        model.train()
        loss, _, _ = criterion(model, sample)
        loss.backward()
        grads[detach] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        losses[detach] = loss.detach()
    model.zero_grad()
    ref = _naive_loss_with_memory(model, sample, d.pad(),
                                  lambda s, t, s2, j: (s2 == s and j < t) or (rule == "ext" and s2 != s),
                                  detach_keys=True)
    ref.backward()
    assert torch.allclose(losses[True].double(), ref, rtol=1e-5)
    assert torch.equal(losses[True], losses[False])  # detaching changes no forward value
    differs = False
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        assert torch.allclose(grads[True][name].double(), p.grad.double(), rtol=1e-3, atol=1e-6), name
        differs |= not torch.allclose(grads[True][name], grads[False][name], rtol=1e-3, atol=1e-6)
    assert differs, "detaching the memory keys changed no gradient"


@pytest.mark.parametrize("adaptive", [False, True], ids=["softmax", "adaptive"])
def test_memory_none_is_the_plain_lm_loss_on_every_word(tmp_path, adaptive):
    """--memory none (the vanilla baseline): Eq. 1 on every word, in training and validation;
    parameter gradients equal the naive full-vocabulary NLL (an adaptive softmax included)."""
    d = write_dictionary(tmp_path / "data")
    sample = lm_sample(d, _rows(5, [5, 6, 14, 15, 26, 37]), pad_last=3)
    torch.manual_seed(0)
    task, model, criterion = build(tmp_path / "data", ("--memory", "none", *(ADAPTIVE if adaptive else ())))
    model.train()
    loss, _, log = criterion(model, sample)
    assert torch.equal(loss.detach(), log["lm_loss"])
    loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    decoder_out = model.decoder(sample["net_input"]["src_tokens"])
    asm = model.decoder.adaptive_softmax
    scores = decoder_out[0].double() if asm is None else adaptive_vocab_scores(asm, decoder_out[0])
    target, pad = sample["target"], d.pad()
    log_probs = scores.log_softmax(-1).gather(-1, target[..., None])[..., 0]
    ref = -log_probs[target != pad].sum()
    ref.backward()
    assert torch.allclose(loss.double(), ref, rtol=1e-5)
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(ours[name].double(), p.grad.double(), rtol=1e-3, atol=1e-6), name
    if not adaptive:  # fairseq's own cross-entropy (which cannot train an adaptive softmax)
        ce, _, _ = build(tmp_path / "data", (), ("--criterion", "cross_entropy"))[2](model, sample)
        assert torch.allclose(loss, ce, rtol=1e-5)
    model.eval()
    valid_loss, _, log = criterion(model, sample)  # validation: no memory either
    assert torch.allclose(valid_loss, log["lm_loss"])


def test_memory_none_refuses_memory_options(tmp_path):
    write_dictionary(tmp_path / "data")
    with pytest.raises(ValueError, match="--memory none has none"):
        build(tmp_path / "data", ("--memory", "none", "--detach-memory"))


@pytest.mark.parametrize("extra, explained, warmup_hint", [
    (("--memory", "local"), True, True),
    (("--memory", "local", "--ce-warmup-updates", "5"), True, False),
    (("--memory", "none"), False, False),  # no memory: loss is lm_loss, nothing to explain
])
def test_training_log_explains_loss_and_lm_loss(tmp_path, caplog, extra, explained, warmup_hint):
    import logging

    write_dictionary(tmp_path, 20)
    with caplog.at_level(logging.INFO, logger="trime"):  # trime.glue.criterion logs it
        build(tmp_path, extra)
    assert ("loss can be above lm_loss" in caplog.text) == explained
    assert ("--ce-warmup-updates 0: the paper trains with the plain LM loss" in caplog.text) == warmup_hint
