"""The evaluation loop of a trime_lm checkpoint in Python, shared by trime's console scripts,
``trime-repro`` and benchmarks.

``load_for_eval`` sets up a trime_lm task and a checkpoint as ``fairseq-eval-lm`` does;
``start_split`` begins a fresh evaluation of a split with given settings (the model's
``start_evaluation``) and returns its batches in stream order; ``evaluate`` runs
fairseq's own eval-lm loop over them.
"""

import time

def load_for_eval(data, path, gen_subset="valid", tokens_per_sample=512, context_window=0,
                  batch_size=None, cpu=False, extra=()):
    """(task, model, cfg, dataset): a trime_lm task and one checkpoint, set up as fairseq-eval-lm does."""
    import torch
    from fairseq import checkpoint_utils, options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import trime

    argv = [str(data), "--user-dir", trime.USER_DIR, "--task", "trime_lm", "--path", str(path),
            "--gen-subset", gen_subset, "--tokens-per-sample", str(tokens_per_sample),
            "--context-window", str(context_window), *map(str, extra)]
    if batch_size:
        argv += ["--batch-size", str(batch_size)]
    if cpu:
        argv += ["--cpu"]
    args = options.parse_args_and_arch(options.get_eval_lm_parser(), argv)
    cfg = convert_namespace_to_omegaconf(args)
    utils.import_user_module(cfg.common)
    cfg.task.tokens_per_sample -= context_window  # as fairseq-eval-lm does
    task = tasks.setup_task(cfg.task)
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], task=task)
    model = models[0]
    if torch.cuda.is_available() and not cpu:
        model.cuda()
    model.prepare_for_inference_(cfg)
    task.load_dataset(gen_subset)
    return task, model, cfg, task.dataset(gen_subset)


def start_split(task, model, cfg, dataset, settings=None, retriever=None):
    """fairseq-eval-lm's batches of ``dataset`` in stream order, after ``model`` started a fresh
    evaluation of it under ``settings`` (default: the task's) and ``retriever`` (default: the
    task's): an empty FIFO, a new datastore writer with --save-dstore."""
    from fairseq import utils

    context_window = cfg.eval_lm.context_window
    task.start_evaluation(dataset, context_window, [model], settings, retriever)
    return task.stream_batches(
        dataset, max_tokens=cfg.dataset.max_tokens or 36000, batch_size=cfg.dataset.batch_size,
        max_positions=utils.resolve_max_positions(model.max_positions()), num_shards=1,
        shard_id=0, num_workers=0, context_window=context_window)


def evaluate(task, model, cfg, dataset, settings=None, max_batches=None, retriever=None):
    """fairseq's eval-lm loop with these EvalSettings (and retriever; default: the task's).

    Returns {loss (base 2), perplexity, tokens, seconds, batches}; ``batches`` lists
    (tokens, seconds spent scoring) per batch. ``max_batches``: stop early (benchmarks).
    """
    from fairseq_cli.eval_lm import eval_lm

    itr = task.with_progress(start_split(task, model, cfg, dataset, settings, retriever), dataset)
    per_batch = []

    def counted(batches):
        for i, sample in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                return
            start = time.perf_counter()
            yield sample  # eval_lm scores it before asking for the next one
            per_batch.append((int(sample["ntokens"]) if sample else 0, time.perf_counter() - start))

    start = time.perf_counter()
    results = eval_lm([model], task.source_dictionary, counted(itr),
                      target_dictionary=task.target_dictionary)
    seconds = time.perf_counter() - start
    return {"loss": float(results["loss"]), "perplexity": float(results["perplexity"]),
            "tokens": sum(n for n, _ in per_batch), "seconds": seconds, "batches": per_batch}
