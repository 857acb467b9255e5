"""``trime_mt_loss`` on a real fairseq Transformer vs the naive Eq. 5 reference.

The reference takes the decoder's logits and representation from the model, lists every
token's memory explicitly (the target tokens of the *other* sentences; top-k by sorting) and
builds Eq. 5 word by word in float64 (tests/naive.py). Losses rtol 1e-5; parameter gradients
rtol 1e-3, atol 1e-5 of each tensor's largest entry.
"""

import pytest
import torch

from fairseq_utils import build_translation, translation_sample
from naive import naive_loss_over_memory, top_k_memory


def _batch(dictionary, seed=0, B=3, lengths=(6, 4, 5)):
    gen = torch.Generator().manual_seed(seed)
    first = dictionary.nspecial
    few = list(range(first, first + 6))  # a few target ids, so that memory positives are common

    def draw(ids, n):
        return [ids[i] for i in torch.randint(len(ids), (n,), generator=gen).tolist()]

    sources = [draw(list(range(first, first + 20)), n + 1) for n in lengths[:B]]
    targets = [draw(few, n) for n in lengths[:B]]
    return translation_sample(dictionary, sources, targets)


def _naive(model, sample, pad, mt_key="final", top_k=None, temperature=1.0, label_smoothing=0.0):
    captured = {}
    handle = model.decoder.layers[-1].fc1.register_forward_pre_hook(
        lambda m, inp: captured.update(g=inp[0]))
    features = model(**sample["net_input"], features_only=True)[0]
    handle.remove()
    scores = model.decoder.output_layer(features).double()
    g = features if mt_key == "final" else captured["g"].transpose(0, 1)
    target = sample["target"]
    B, T = target.shape
    valid = (target != pad).tolist()
    memory = [[[(s2, j) for s2 in range(B) if s2 != s for j in range(T) if valid[s2][j]]
               for _ in range(T)] for s in range(B)]
    if top_k is not None:
        memory = top_k_memory(g, memory, top_k)
    return naive_loss_over_memory(scores, g, target, memory, pad, temperature=temperature,
                                  label_smoothing=label_smoothing)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mt_key, top_k, temperature, smoothing", [
    ("final", None, 1.0, 0.0),
    ("final", 3, 10.0, 0.0),      # the authors' recipe, with a smaller k
    ("last-ffn-input", None, 2.0, 0.0),
    ("final", 2, 1.0, 0.1),
])
def test_loss_and_gradients_match_the_naive_reference(tmp_path, mt_key, top_k, temperature, smoothing):
    extra = ["--mt-key", mt_key, "--memory-temp", str(temperature),
             "--label-smoothing", str(smoothing), "--memory-chunk-size", "4"]
    if top_k is not None:
        extra += ["--memory-topk", str(top_k)]
    task, model, criterion = build_translation(tmp_path, extra)
    torch.manual_seed(0)
    for p in model.parameters():  # a little larger than the init, so that memory matters
        p.data.mul_(2.0)
    pad = task.target_dictionary.pad()
    sample = _batch(task.target_dictionary)
    model.train()
    loss, sample_size, log = criterion(model, sample)
    assert sample_size == sample["ntokens"]
    loss.backward()
    ours = _grads(model)
    model.zero_grad()
    reference = _naive(model, sample, pad, mt_key, top_k, temperature, smoothing)
    reference.backward()
    theirs = _grads(model)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    if not smoothing:
        assert log["nll_loss"].item() == pytest.approx(reference.item(), rel=1e-5)
    assert ours.keys() == theirs.keys()
    for name in ours:
        reference_grad = theirs[name].to(ours[name].dtype)
        if name.endswith("k_proj.bias"):  # zero in exact arithmetic (softmax ignores a shift)
            assert float(ours[name].abs().max()) < 1e-4 and float(reference_grad.abs().max()) < 1e-4
            continue
        atol = 1e-5 * float(reference_grad.abs().max()) + 1e-7
        assert torch.allclose(ours[name], reference_grad, rtol=1e-3, atol=atol), (
            name, float((ours[name] - reference_grad).abs().max()), float(reference_grad.abs().max()))


def test_memory_changes_the_loss_and_the_own_sentence_is_never_memory(tmp_path):
    task, model, criterion = build_translation(tmp_path)
    pad = task.target_dictionary.pad()
    sample = _batch(task.target_dictionary)
    model.eval()
    with torch.no_grad():
        _, _, log = criterion(model, sample)
        memoryless = _naive(model, sample, pad, top_k=None)  # sanity: the reference has memory
        nothing_visible = [[[] for _ in range(sample["target"].shape[1])] for _ in range(3)]
        features = model(**sample["net_input"], features_only=True)[0]
        vocab_only = naive_loss_over_memory(model.decoder.output_layer(features).double(), features,
                                            sample["target"], nothing_visible, pad)
    assert log["nll_loss"].item() == pytest.approx(memoryless.item(), rel=1e-5)
    assert log["lm_loss"].item() == pytest.approx(vocab_only.item(), rel=1e-5)
    assert abs(log["nll_loss"].item() - log["lm_loss"].item()) > 1e-3
    one = _batch(task.target_dictionary, B=1)  # one sentence: no other sentence, no memory
    with torch.no_grad():
        _, _, log = criterion(model, one)
    assert log["nll_loss"].item() == pytest.approx(log["lm_loss"].item(), rel=1e-6)


def test_one_sentence_equals_fairseqs_label_smoothed_cross_entropy(tmp_path):
    smoothing = ["--label-smoothing", "0.1"]
    task, model, criterion = build_translation(tmp_path, smoothing)
    _, _, fairseq_criterion = build_translation(
        tmp_path, smoothing, criterion_args=("--criterion", "label_smoothed_cross_entropy"))
    one = _batch(task.target_dictionary, B=1)
    model.eval()
    with torch.no_grad():
        ours, _, _ = criterion(model, one)
        theirs, _, _ = fairseq_criterion(model, one)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_ce_warmup_trains_without_memory_and_validates_with_it(tmp_path):
    task, model, criterion = build_translation(tmp_path, ["--ce-warmup-updates", "5"])
    sample = _batch(task.target_dictionary)
    model.train()
    criterion.set_num_updates(4)
    _, _, warm = criterion(model, sample)
    assert warm["nll_loss"].item() == pytest.approx(warm["lm_loss"].item(), rel=1e-6)
    criterion.set_num_updates(5)
    _, _, after = criterion(model, sample)
    assert abs(after["nll_loss"].item() - after["lm_loss"].item()) > 1e-4
    model.eval()
    criterion.set_num_updates(0)
    with torch.no_grad():
        _, _, valid = criterion(model, sample)
    assert abs(valid["nll_loss"].item() - valid["lm_loss"].item()) > 1e-4


def test_the_capture_hook_is_removed_after_each_forward(tmp_path):
    task, model, criterion = build_translation(tmp_path, ["--mt-key", "last-ffn-input"])
    fc1 = model.decoder.layers[-1].fc1
    criterion(model, _batch(task.target_dictionary))
    assert not fc1._forward_pre_hooks


@pytest.mark.parametrize("extra, message", [
    (["--memory-topk", "0"], "--memory-topk must be >= 1"),
    (["--memory-temp", "0"], "--memory-temp must be > 0"),
    (["--label-smoothing", "1.0"], r"--label-smoothing must be in \[0, 1\)"),
    (["--ce-warmup-updates", "-1"], "--ce-warmup-updates must be >= 0"),
])
def test_bad_options_are_refused(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        build_translation(tmp_path, extra)


def test_another_task_is_refused(tmp_path):
    with pytest.raises(ValueError, match="needs --task trime_translation"):
        build_translation(tmp_path, task="translation")


def test_label_smoothing_with_an_adaptive_softmax_is_refused(tmp_path):
    task, model, criterion = build_translation(
        tmp_path, ["--label-smoothing", "0.1", "--adaptive-softmax-cutoff", "15",
                   "--adaptive-softmax-dropout", "0"])
    with pytest.raises(ValueError, match="adaptive softmax: drop --label-smoothing"):
        criterion(model, _batch(task.target_dictionary))
