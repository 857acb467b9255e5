"""Tuning on a dev split in one pass (``trime-tune``): ``collect`` scores every token once and keeps
a few numbers per token (``trime.core.target_stats.TargetStats``), ``grid`` turns them into the
perplexity of every grid point (τ; λ and τ′ / T with a datastore; λ_c and θ with the cache), and
``frequency_table`` splits the best point by target frequency (paper Table 14). The MT side is
``trime.mt.tuning``."""

import logging
import math
import sys
import time

logger = logging.getLogger("trime.tune")

FREQUENCY_BUCKETS = ((10_000, math.inf, "> 10k"), (1_000, 10_000, "1k-10k"),
                     (100, 1_000, "100-1k"), (10, 100, "10-100"), (0, 10, "<= 10"))
ACCURACY_KS = (1, 8, 64, 1024)


def collect(task, model, cfg, dataset, temperatures, max_batches=None, partial=None,
            save_every=300.0):
    """One pass over the split: (TargetStats [N], first_hit [N], targets [N]) of every scored token.

    With ``partial`` (a ``trime.partial.Partial``), what has been scored (and the long-memory FIFO)
    is saved there every ``save_every`` seconds, and a pass that finds it saved by the same command
    goes on after its last saved batch instead of scoring the split from the start."""
    import torch
    from fairseq import utils
    from tqdm import tqdm

    from trime.core.target_stats import TargetStats
    from trime.lm.harness import start_split

    itr = start_split(task, model, cfg, dataset)
    scorer = model.evaluation.scorer
    device = next(model.parameters()).device
    stats, hits, targets = [], [], []
    done = _resume(partial, scorer, stats, hits, targets)
    last_save = time.monotonic()
    pad = task.source_dictionary.pad()
    for i, sample in enumerate(tqdm(itr, desc="scoring", unit="batch")):
        if max_batches is not None and i >= max_batches:
            break
        if i < done or not sample:  # scored before the interruption (resumed), or empty
            continue
        sample = utils.move_to_cuda(sample) if device.type == "cuda" else sample
        with torch.no_grad():
            decoder_out, extra = model(**sample["net_input"])
            batch_stats, first_hit = scorer.target_stats(decoder_out, extra, sample, temperatures)
        scored = sample["target"].ne(pad)
        stats.append(batch_stats[scored].to("cpu"))
        hits.append(first_hit[scored].cpu())
        targets.append(sample["target"][scored].cpu())
        if partial is not None and time.monotonic() - last_save >= save_every:
            _save_progress(partial, i + 1, scorer, stats, hits, targets)
            last_save = time.monotonic()
    if not stats:
        raise ValueError("no token of the split was scored: is the split empty?")
    return TargetStats.cat(stats), torch.cat(hits), torch.cat(targets)


def _save_progress(partial, batches, scorer, stats, hits, targets):
    """Keep the pass so far in ``partial``; the lists are compacted to one entry each on the way."""
    import torch

    from trime.core.target_stats import TargetStats

    stats[:], hits[:], targets[:] = [TargetStats.cat(stats)], [torch.cat(hits)], [torch.cat(targets)]
    fields = {"target_score": stats[0].target_score, "log_z_vocab": stats[0].log_z_vocab,
              "temperatures": list(stats[0].temperatures), "lse_all": stats[0].lse_all,
              "lse_pos": stats[0].lse_pos}
    fifo = scorer.fifo.state() if scorer.fifo is not None else None
    partial.save({"batches": batches, "stats": fields, "first_hit": hits[0], "targets": targets[0],
                  "fifo": fifo})


def _resume(partial, scorer, stats, hits, targets) -> int:
    """Batches already scored by an interrupted pass of the same command (their results put in
    the lists, the FIFO restored); 0 when there is none."""
    from trime.core.target_stats import TargetStats

    saved = partial.load() if partial is not None else None
    if saved is None:
        return 0
    fields = saved["stats"]
    stats.append(TargetStats(fields["target_score"], fields["log_z_vocab"],
                             tuple(fields["temperatures"]), fields["lse_all"], fields["lse_pos"]))
    hits.append(saved["first_hit"])
    targets.append(saved["targets"])
    if saved["fifo"] is not None:
        scorer.fifo.load_state(saved["fifo"])
    logger.info(f"TRIME: resuming the interrupted scoring after batch {saved['batches']} "
                f"({partial.path})")
    return saved["batches"]


def perplexity(mean_nll: float) -> float:
    """exp of a mean negative log-likelihood in nats; inf where an extreme grid point lies beyond
    float range (exp overflows above ~709)."""
    return math.exp(mean_nll) if mean_nll < math.log(sys.float_info.max) else math.inf


def grid(stats, scoring, settings, taus, interp_temps, lambdas, cache_lambdas=(), cache_thetas=()):
    """[{tau, lambda, interp_temp, cache_lambda, cache_theta, loss (base 2), perplexity}] for every
    grid point (τ with trime scoring; λ, τ′ / T with external memory; λ_c, θ with the cache)."""
    rows = []
    has_ext = settings.uses_ext
    cache_points = [(c, t) for c in cache_lambdas for t in cache_thetas] if settings.uses_cache \
        else [(None, None)]
    for tau in (taus if scoring == "trime" else [None]):
        for interp_temp in (interp_temps if has_ext else [None]):
            for lam in (lambdas if has_ext else [0.0]):
                for cache_lambda, cache_theta in cache_points:
                    log_p = stats.target_log_prob(scoring, tau or 1.0, lam, interp_temp or 1.0,
                                                  settings.knn_interp_memory,
                                                  cache_lambda=cache_lambda or 0.0,
                                                  cache_theta=cache_theta or 1.0)
                    nats = float(-log_p.double().mean())
                    rows.append({"tau": tau, "lambda": lam if has_ext else None,
                                 "interp_temp": interp_temp, "cache_lambda": cache_lambda,
                                 "cache_theta": cache_theta, "loss": nats / math.log(2),
                                 "perplexity": perplexity(nats)})
    return rows


def frequency_table(stats, targets, scoring, best, settings):
    """Table 14: perplexity per frequency bucket of the target, the frequency being its count in
    the evaluated split (as in the paper: "their frequency on the development set")."""
    import torch

    counts = torch.bincount(targets)[targets]
    columns = {"LM only": stats.vocab_log_prob}
    if scoring == "trime" and settings.span_memory != "none":
        columns[f"{settings.span_memory} (Eq. 6)"] = stats.target_log_prob(
            "trime", best["tau"], memory="span")
    columns["best"] = stats.target_log_prob(
        scoring, best["tau"] or 1.0, best["lambda"] or 0.0, best["interp_temp"] or 1.0,
        settings.knn_interp_memory, cache_lambda=best["cache_lambda"] or 0.0,
        cache_theta=best["cache_theta"] or 1.0)
    rows = []
    for low, high, name in FREQUENCY_BUCKETS:
        in_bucket = (counts > low) & (counts <= high)  # every count is >= 1
        row = {"bucket": name, "tokens": int(in_bucket.sum())}
        for column, log_p in columns.items():
            row[column] = perplexity(float(-log_p[in_bucket].double().mean())) \
                if in_bucket.any() else float("nan")
        rows.append(row)
    return rows
