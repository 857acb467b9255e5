"""The vocabulary term of Eq. 5 for a plain softmax: log p(w*) and log Z from the logits, with a
backward as cheap as cross-entropy's (every frontend's: fairseq's criteria, ``trime.hf``)."""

import torch


def _at_least_fp32(x):
    return x if x.dtype == torch.float64 else x.float()


class _SoftmaxAtTarget(torch.autograd.Function):
    """(log p(w*), log Z) of a softmax, with one fused pass over [N, V] in backward.

    d/d logits = g_lp · onehot(w*) + (g_Z - g_lp) · softmax — as cheap as the
    backward of cross-entropy (logsumexp and gather backwards cost ~3x on CPU).
    """

    @staticmethod
    def forward(ctx, logits, targets):
        log_probs = torch.log_softmax(_at_least_fp32(logits), dim=-1)
        index = targets.unsqueeze(-1)
        target_log_prob = log_probs.gather(-1, index).squeeze(-1)
        log_z = _at_least_fp32(logits.gather(-1, index).squeeze(-1)) - target_log_prob
        ctx.save_for_backward(log_probs, index)
        ctx.logits_dtype = logits.dtype
        return target_log_prob, log_z

    @staticmethod
    def backward(ctx, grad_target, grad_log_z):
        log_probs, index = ctx.saved_tensors
        if grad_target is None:
            grad_target = torch.zeros_like(log_probs[..., 0])
        if grad_log_z is None:
            grad_log_z = torch.zeros_like(log_probs[..., 0])
        grad = torch.exp(log_probs)
        grad.mul_((grad_log_z - grad_target).unsqueeze(-1))
        grad.scatter_add_(-1, index, grad_target.unsqueeze(-1))
        return grad.to(ctx.logits_dtype), None


def softmax_target_log_prob(logits, targets):
    """(log p(w*), log Z) for logits [..., V] and targets [...], fp32 (fp64 for fp64 logits)."""
    return _SoftmaxAtTarget.apply(logits, targets)
