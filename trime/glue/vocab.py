"""The vocabulary part of Eq. 5: unnormalised scores s_w = E_wᵀ f(c).

- plain softmax: s_w is the logit, the vocabulary mass is logsumexp_w s_w;
- fairseq ``AdaptiveSoftmax``: s_w = log Z + log p(w), with Z the partition
  function of the head (shortlist + cluster logits), so the vocabulary mass is
  log Z (as in the authors' implementation).

Everything is returned in fp32 and computed for every target, including the
tail-cluster words that fairseq's ``adaptive_loss`` leaves out of its loss.
"""

import torch

from trime.core.mixtures import VocabLogProbs, vocab_log_probs
from trime.core.softmax import softmax_target_log_prob


def _adaptive_softmax(decoder):
    return getattr(decoder, "adaptive_softmax", None)


def target_scores(decoder, features, targets):
    """s_{w*} and the log vocabulary mass for each position.

    Args:
        decoder: a fairseq decoder (``output_layer`` or ``adaptive_softmax``).
        features: [B, T, C] output features f(c).
        targets: [B, T] target ids.
    Returns:
        (target_score, log_partition), fp32 [B, T]; -log p_vocab(w*) = log_partition - target_score.
    """
    asm = _adaptive_softmax(decoder)
    if asm is None:
        target_log_prob, log_partition = softmax_target_log_prob(decoder.output_layer(features), targets)
        return target_log_prob + log_partition, log_partition
    return _adaptive_target_scores(asm, features, targets)


def _adaptive_target_scores(asm, features, targets):
    B, T, C = features.shape
    x = asm.dropout_module(features.contiguous().view(-1, C))
    flat_targets = targets.reshape(-1)
    head = asm.head(x).float()
    log_z = head.logsumexp(-1)
    head_log_probs = head - log_z[:, None]
    shortlist = asm.cutoff[0]
    in_head = flat_targets < shortlist
    log_p = torch.where(
        in_head,
        head_log_probs.gather(1, flat_targets.clamp(max=shortlist - 1)[:, None]).squeeze(1),
        torch.zeros_like(log_z),
    )
    for i, tail in enumerate(asm.tail):
        lo, hi = asm.cutoff[i], asm.cutoff[i + 1]
        rows = ((flat_targets >= lo) & (flat_targets < hi)).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        tail_log_probs = tail(x.index_select(0, rows)).float().log_softmax(-1)
        within = tail_log_probs.gather(1, (flat_targets[rows] - lo)[:, None]).squeeze(1)
        log_p = log_p.index_put((rows,), head_log_probs[rows, shortlist + i] + within)
    return (log_z + log_p).view(B, T), log_z.view(B, T)


# a bound on the [rows × width] score tensors of eval_target_scores (elements; 256 MB in fp32)
EVAL_CHUNK_ELEMENTS = 1 << 26


def eval_target_scores(decoder, decoder_out, targets, chunk_elements: int = None):
    """(s_w* [B, T], log Z_vocab [B, T]) fp32 at evaluation, from what the decoder returned
    (logits for a plain softmax, features for an adaptive one): the two numbers Eq. 6–9
    need from the vocabulary at each target. An adaptive softmax computes only the tail
    clusters that hold targets, as fairseq's own scoring does. Positions are taken in chunks
    of rows so that no temporary holds more than ``chunk_elements`` scores: memory is bounded
    by the chunk, not by batch × vocabulary (WikiText-103: 36,000 tokens × 267,744 words would
    be 38 GB in fp32)."""
    asm = _adaptive_softmax(decoder)
    B, T = targets.shape
    width = decoder_out.shape[-1] if asm is None else max(
        [asm.head.out_features if hasattr(asm.head, "out_features") else asm.cutoff[0]]
        + [asm.cutoff[i + 1] - asm.cutoff[i] for i in range(len(asm.tail))])
    rows = max(1, (chunk_elements or EVAL_CHUNK_ELEMENTS) // max(1, width))
    flat_out = decoder_out.reshape(B * T, 1, decoder_out.shape[-1])
    flat_targets = targets.reshape(B * T, 1).clamp(min=0)  # a padding id < 0 (trime.hf) reads entry 0
    scores, log_zs = [], []
    for start in range(0, B * T, rows):
        out, target = flat_out[start:start + rows], flat_targets[start:start + rows]
        if asm is None:
            scores.append(out.gather(-1, target.unsqueeze(-1)).squeeze(-1).float())
            log_zs.append(out.float().logsumexp(-1))
        else:
            score, log_z = _adaptive_target_scores(asm, out, target)
            scores.append(score)
            log_zs.append(log_z)
    return torch.cat(scores).view(B, T), torch.cat(log_zs).view(B, T)


def full_log_probs(decoder, decoder_out):
    """The vocabulary distribution of every position (evaluation), as a
    ``trime.core.mixtures.VocabLogProbs``: log p(w) fp32 [B, T, V] and log Z [B, T, 1], s_w = both summed.

    ``decoder_out`` is what the decoder returns without ``features_only``: the
    logits for a plain softmax, the features for an adaptive softmax (whose
    ``output_layer`` is the identity; Z is the head's partition function).
    """
    asm = _adaptive_softmax(decoder)
    if asm is None:
        return vocab_log_probs(decoder_out)
    B, T, C = decoder_out.shape
    features = decoder_out.contiguous()
    # the head may return [B*T, out] (TiedHeadModule): flatten, then restore
    log_z = asm.head(features.view(-1, C)).float().logsumexp(-1).view(B, T, 1)
    return VocabLogProbs(asm.get_log_prob(features, None).float(), log_z)
