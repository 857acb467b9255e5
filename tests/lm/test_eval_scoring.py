"""Evaluation-time scoring (what fairseq-eval-lm calls) vs the naive Eq. 6."""

import pytest
import torch

from fairseq_utils import ADAPTIVE, build, lm_sample, write_dictionary
from naive import adaptive_vocab_scores, eq6_distribution
from trime.settings import EvalSettings
from trime.glue.scorer import TARGETS_ONLY


def _eval_model(tmp_path, extra=()):
    d = write_dictionary(tmp_path / "data")
    torch.manual_seed(0)
    task, model, _ = build(tmp_path / "data", extra)
    return d, model.eval()


def _context_window_sample(d):
    """Like LMContextWindowDataset: the first 4 positions are context (target = pad)."""
    rows = [[5, 6, 14, 15, 5, 6, 14, 15, 26, 5, 6, 14, 15], [7, 8, 7, 8, 9, 7, 8, 9, 7, 8, 9, 7, 8]]
    sample = lm_sample(d, rows)
    sample["target"][:, :4] = d.pad()
    return sample


def _naive_log_probs(model, sample, pad, tau):
    captured = {}
    handle = model.decoder.layers[-1].fc1.register_forward_pre_hook(
        lambda m, inp: captured.update(g=inp[0]))
    with torch.no_grad():
        out = model.decoder(sample["net_input"]["src_tokens"])
    handle.remove()
    g = captured["g"].transpose(0, 1)
    asm = model.decoder.adaptive_softmax
    scores = out[0].double() if asm is None else adaptive_vocab_scores(asm, out[0])
    src, target = sample["net_input"]["src_tokens"], sample["target"]
    B, T = target.shape
    result = torch.zeros(B, T, scores.size(-1), dtype=torch.float64)
    for b in range(B):
        # label of position j: its target, or the next input token for context positions
        labels = [int(target[b, j]) if int(target[b, j]) != pad
                  else (int(src[b, j + 1]) if j + 1 < T else pad) for j in range(T)]
        for t in range(T):
            memory = [j for j in range(t) if labels[j] != pad]
            p = eq6_distribution(scores[b, t], g[b, t], g[b], torch.tensor(labels), memory, tau)
            result[b, t] = p.log()
    return result


@pytest.mark.parametrize("adaptive", [False, True], ids=["softmax", "adaptive"])
def test_eval_local_memory_matches_naive_eq6(tmp_path, adaptive):
    d, model = _eval_model(tmp_path, ADAPTIVE if adaptive else ())
    model.start_evaluation("valid", settings=EvalSettings(eval_memory="local", memory_temp=1.3))
    sample = _context_window_sample(d)
    with torch.no_grad():
        out = model(**sample["net_input"])
        at_targets = model.get_normalized_probs(out, log_probs=True,
                                                sample={**sample, TARGETS_ONLY: True})
        ours = model.get_normalized_probs(out, log_probs=True, sample=sample)
    ref = _naive_log_probs(model, sample, d.pad(), 1.3)
    assert torch.allclose(ours.double(), ref, atol=1e-5)
    # what fairseq-eval-lm's batches ask for: only each target's entry is computed
    target = sample["target"]
    scored = target != d.pad()
    gather = (lambda x: x.gather(-1, target[..., None])[..., 0][scored])
    assert torch.allclose(gather(at_targets).double(), gather(ref), atol=1e-5)


def test_eval_memory_none_is_plain_lm(tmp_path):
    d, model = _eval_model(tmp_path)
    sample = _context_window_sample(d)
    with torch.no_grad():
        out = model(**sample["net_input"])
        ours = model.get_normalized_probs(out, log_probs=True, sample=sample)
    assert torch.allclose(ours, torch.log_softmax(out[0].float(), -1), atol=1e-6)


@pytest.mark.parametrize("adaptive", [False, True], ids=["softmax", "adaptive"])
@pytest.mark.parametrize("chunk_elements", [None, 7], ids=["one-chunk", "rows-in-chunks"])
def test_eval_memory_none_at_the_targets_is_fairseqs_distribution(tmp_path, adaptive, chunk_elements,
                                                                 monkeypatch):
    """fairseq-eval-lm's batches (targets only) without memory: each target's log-probability
    equals fairseq's own full distribution there, whether the positions are taken in one chunk
    or a few at a time (memory bounded by the chunk, not by tokens × vocabulary)."""
    from trime.glue import vocab

    if chunk_elements:
        monkeypatch.setattr(vocab, "EVAL_CHUNK_ELEMENTS", chunk_elements)
    d, model = _eval_model(tmp_path, ADAPTIVE if adaptive else ())
    sample = _context_window_sample(d)
    sample["target"][:, :4] = torch.tensor([[5, 15, 25, 2], [33, 7, 12, 38]])  # every cluster
    with torch.no_grad():
        out = model(**sample["net_input"])
        fairseqs = model.get_normalized_probs(out, log_probs=True, sample=sample)  # [B, T, V]
        ours = model.get_normalized_probs(out, log_probs=True, sample={**sample, TARGETS_ONLY: True})
    index = sample["target"][..., None]
    assert ours.stride(-1) == 0  # one number per position, broadcast over the vocabulary
    assert torch.allclose(ours.gather(-1, index), fairseqs.gather(-1, index), atol=1e-5)


def test_non_finite_target_log_prob_is_refused(tmp_path):
    d, model = _eval_model(tmp_path)
    model.start_evaluation("valid", settings=EvalSettings(eval_memory="local"))
    with torch.no_grad():
        model.decoder.layers[-1].fc2.bias.fill_(float("nan"))
    sample = _context_window_sample(d)
    with torch.no_grad(), pytest.raises(FloatingPointError, match="silently drop"):
        model.get_normalized_probs(model(**sample["net_input"]), log_probs=True, sample=sample)


def test_softmax_batch_split_is_refused(tmp_path):
    d, model = _eval_model(tmp_path)
    model.start_evaluation("valid", settings=EvalSettings(eval_memory="local"))
    sample = _context_window_sample(d)
    with torch.no_grad():
        features, extra = model(**sample["net_input"])
        with pytest.raises(ValueError, match="--softmax-batch"):
            model.get_normalized_probs((features[:1, :5], extra), log_probs=True, sample=sample)


@pytest.mark.parametrize("cache_key", ["final", "last-ffn-input"])
def test_continuous_cache_matches_naive(tmp_path, cache_key):
    """--eval-scoring cache: (1-λ) p_LM + λ p_cache over local memory, h = the decoder's output
    features (final) or g(c), built word by word."""
    from naive import cache_distribution

    d, model = _eval_model(tmp_path)
    model.start_evaluation("valid", settings=EvalSettings(
        eval_memory="local", eval_scoring="cache", cache_lambda=0.3, cache_theta=0.05,
        cache_key=cache_key))
    sample = _context_window_sample(d)
    with torch.no_grad():
        ours = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True, sample=sample)
        captured = {}
        handle = model.decoder.layers[-1].fc1.register_forward_pre_hook(
            lambda m, inp: captured.update(g=inp[0]))
        features, _ = model.decoder(sample["net_input"]["src_tokens"], features_only=True)
        handle.remove()
        logits = model.decoder.output_layer(features)
    h = features if cache_key == "final" else captured["g"].transpose(0, 1)
    src, target, pad = sample["net_input"]["src_tokens"], sample["target"], d.pad()
    B, T = target.shape
    for b in range(B):
        labels = [int(target[b, j]) if int(target[b, j]) != pad
                  else (int(src[b, j + 1]) if j + 1 < T else pad) for j in range(T)]
        for t in range(T):
            memory = [j for j in range(t) if labels[j] != pad]
            p = cache_distribution(logits[b, t], h[b, t], h[b], labels, memory, 0.3, 0.05)
            assert torch.allclose(ours[b, t].double(), p.log(), atol=1e-5), (b, t)
