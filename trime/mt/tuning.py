"""Decoding a split once per setting and scoring it with sacrebleu (``trime-mt-tune``).

A translation's quality under kNN-MT or TrimeMT_ext depends on k, λ, T (or τ, τ′) through beam
search, so unlike the LM's ``trime-tune`` no single pass can score every grid point: each point
decodes the split again. What repeats is the datastore search — the beams of every point start
from the same prefixes — so the retriever of every point searches through one
``CachedSearch`` at the largest k (``trime.extmem.search_cache``).
"""

import dataclasses


def grid_points(scoring: str, ks, lambdas, interp_temps, taus):
    """The distinct decoding settings of the grid, as EvalSettings overrides.

    kNN-MT (``knnlm``): k × λ × T; λ = 0 is decoding without memory (the baseline row), so it is
    left out. TrimeMT_ext (``trime``): k × τ × λ × τ′, where λ = 0 is Eq. 6 alone and τ′ is unused.
    """
    points = []
    for k in ks:
        for tau in (taus if scoring == "trime" else [None]):
            for lam in lambdas:
                if scoring == "knnlm" and lam == 0:
                    continue
                for temp in (interp_temps if lam > 0 else [None]):
                    point = {"knn_k": k, "knn_lambda": lam, "knn_temp": temp}
                    if scoring == "trime":
                        point["memory_temp"] = tau
                    if point not in points:
                        points.append(point)
    return points


def point_settings(settings, scoring: str, point: dict):
    """``settings`` (the task's checked EvalSettings) with one grid point's values, re-checked."""
    return dataclasses.replace(settings, eval_scoring=scoring, **point)  # knn_temp None: default


def translate(task, generator, model, cfg, subset, progress=None):
    """{sample id: (detokenised best hypothesis, reference)} of ``subset``, as fairseq-generate
    builds the strings it scores (post-processing --post-process, then the task's --bpe and
    --tokenizer decoders; the reference from the binarised target with <unk> escaped)."""
    import torch
    from fairseq import utils

    from fairseq_cli.generate import get_symbols_to_strip_from_output

    tokenizer, bpe = task.build_tokenizer(cfg.tokenizer), task.build_bpe(cfg.bpe)

    def decode(text):
        text = bpe.decode(text) if bpe is not None else text
        return tokenizer.decode(text) if tokenizer is not None else text

    target_dictionary = task.target_dictionary
    strip = get_symbols_to_strip_from_output(generator)
    remove_bpe = cfg.common_eval.post_process
    batches = task.get_batch_iterator(
        dataset=task.dataset(subset), max_tokens=cfg.dataset.max_tokens,
        max_sentences=cfg.dataset.batch_size,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        ignore_invalid_inputs=False, seed=cfg.common.seed,  # trime_translation: every pair
    ).next_epoch_itr(shuffle=False)
    device = next(model.parameters()).device
    out = {}
    for sample in (progress(batches) if progress else batches):
        if device.type == "cuda":
            sample = utils.move_to_cuda(sample)
        with torch.no_grad():
            hypos = task.inference_step(generator, [model], sample)
        for i, sample_id in enumerate(sample["id"].tolist()):
            target = utils.strip_pad(sample["target"][i], target_dictionary.pad()).int().cpu()
            reference = target_dictionary.string(target, remove_bpe, escape_unk=True,
                                                 extra_symbols_to_ignore=strip)
            # the string fairseq's post_process_prediction builds, without its re-encoding of the
            # hypothesis, which adds unseen (BPE-merged) words to the target dictionary
            hypothesis = target_dictionary.string(hypos[i][0]["tokens"].int().cpu(), remove_bpe,
                                                  extra_symbols_to_ignore=strip)
            out[sample_id] = (decode(hypothesis), decode(reference))
    return out


def corpus_bleu(hypotheses, references, tokenize="13a", lowercase=False):
    """(BLEU score, sacrebleu signature) of line-aligned hypotheses and references."""
    from sacrebleu.metrics import BLEU

    metric = BLEU(tokenize=tokenize, lowercase=lowercase)
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return score.score, str(metric.get_signature())
