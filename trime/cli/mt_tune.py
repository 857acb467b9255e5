"""`trime-mt-tune`: choose kNN-MT's k, λ, T (or TrimeMT_ext's k, τ, λ, τ′) by BLEU on a dev split.

Every grid point decodes the split with fairseq's beam search (``trime.mt.tuning``) and is scored
with sacrebleu; the datastore is searched once per distinct query at the largest k and reused by
every point (``trime.extmem.search_cache``). The first row is always the model without memory.
TASK_OPTIONS after ``--`` are fairseq-generate's (--eval-memory ext --dstore DIR --knn-sim,
--knn-nprobe, --beam, --lenpen, --batch-size, --post-process, --tokenizer, --sacrebleu-lowercase,
...); without ``--eval-memory ext`` only the no-memory row is decoded (BLEU of a vanilla model
through the same pipeline).

Writes to --out-dir: ``points.jsonl`` (one line per decoded point, appended as it finishes, so
an interrupted run resumes where it stopped), ``tune.csv``, ``best.json`` (the best point's
options and BLEU with the sacrebleu signature), ``best.args`` (those options on one line), ``hyp/`` (each point's hypotheses, in the split's
order), ``ref.txt`` (the references they are scored against: ``sacrebleu ref.txt -i hyp/FILE``
re-scores a point) and ``tune.png`` (BLEU over λ × T or τ′ at the best k and τ).

    trime-mt-tune bin --path vanilla.pt -s de -t en --scoring knnlm --knn-ks 8,16,32 \\
        --lambdas 0.1,0.2,0.3,0.4 --interp-temps 10,30,100 --out-dir tune-knnmt \\
        -- --eval-memory ext --dstore dstore --knn-sim l2 --beam 4 --batch-size 64 \\
           --post-process subword_nmt --tokenizer moses
    # then the test split with the chosen values (one point), references from the raw text:
    trime-mt-tune bin --path vanilla.pt -s de -t en --gen-subset test --scoring knnlm --knn-ks 16 \\
        --lambdas 0.3 --interp-temps 30 --references raw/test.en --out-dir test-knnmt -- ...
"""

import argparse
import fcntl
import json
import logging
import os
import sys
import time

from trime.cli.prepare_translation import read_lines, write_lines
from trime.cli.tune import comma_values, option_words, warn_on_edges, write_best_args, write_csv
from trime.core.grids import MT_GRIDS
from trime.cli.parsing import HelpFormatter
from trime.errors import console_script

logger = logging.getLogger("trime.mt_tune")

SEARCHED = ("--knn-k", "--knn-lambda", "--knn-temp", "--memory-temp", "--eval-scoring",
            "--gen-subset", "--path", "--results-path", "--source-lang", "-s", "--target-lang", "-t")


def _read_references(path, count, parser):
    try:
        lines = read_lines(path)
    except OSError as error:
        parser.error(f"--references {path}: {error}")
    if len(lines) != count:
        parser.error(f"--references {path} has {len(lines)} lines, the split has {count} pairs: "
                     "give the raw target side of this very split")
    return lines


def _load(path):
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _file_name(point):
    """hyp/ file of a grid point, named by its values (stable when the grid grows)."""
    names = {"knn_k": "k", "memory_temp": "tau", "knn_lambda": "lambda", "knn_temp": "T"}
    parts = [f"{names[key]}{value:g}" for key, value in point.items()
             if key in names and value is not None]
    return "-".join(["ext", *parts] if point["memory"] == "ext" else ["none"]) + ".txt"


def plot(rows, best, png, temp_label):
    """BLEU over λ × the memory temperature at the best point's k (and τ)."""
    from trime.plots import heat_map, pyplot, save_figure

    plt = pyplot()
    memory_rows = [r for r in rows if r["knn_k"] == best["knn_k"] and r["knn_temp"] is not None
                   and r.get("memory_temp") == best.get("memory_temp")]
    if plt is None or len({r["knn_lambda"] for r in memory_rows}) * \
            len({r["knn_temp"] for r in memory_rows}) < 2:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 4))
    heat_map(fig, ax, memory_rows, "knn_temp", "knn_lambda", temp_label, "λ", value_key="bleu",
             lower_is_better=False)
    at = f"k = {best['knn_k']}" + (f", τ = {best['memory_temp']:g}"
                                   if best.get("memory_temp") is not None else "")
    ax.set_title(f"BLEU at {at}")
    save_figure(plt, fig, png)
    return True


@console_script
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="trime-mt-tune", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=HelpFormatter)
    parser.add_argument("data", help="fairseq-preprocess output directory of the parallel data")
    parser.add_argument("--path", required=True, help="the translation checkpoint")
    parser.add_argument("--source-lang", "-s", required=True, metavar="S",
                        help="source language: the suffix of its files (e.g. de)")
    parser.add_argument("--target-lang", "-t", required=True, metavar="T",
                        help="target language: the suffix of its files (e.g. en)")
    parser.add_argument("--gen-subset", default="valid", help="the split to decode (dev for tuning)")
    parser.add_argument("--scoring", choices=("knnlm", "trime"), default="knnlm",
                        help="knnlm: kNN-MT, (1-λ) p_MT + λ p_kNN at temperature T; trime: "
                             "TrimeMT_ext, Eq. 6 at τ then Eq. 9 with λ and τ′")
    parser.add_argument("--knn-ks", default="8,16,32", help="k: entries retrieved per step")
    parser.add_argument("--lambdas", default="0.1,0.2,0.3,0.4,0.5",
                        help="λ in [0, 1) (kNN-MT's weight; TrimeMT_ext's Eq. 9 weight, 0 = Eq. 6 alone)")
    parser.add_argument("--interp-temps", default="10,30,100",
                        help="T of kNN-MT (similarities -‖q-k‖² with --knn-sim l2) or τ′ of Eq. 8")
    parser.add_argument("--taus", default="5,10,20",
                        help="τ of Eq. 6 (--memory-temp, trime scoring; the authors' MT value: 10)")
    parser.add_argument("--references", default=None, metavar="FILE",
                        help="raw target text of the split (.gz allowed) to score against, line i "
                             "for pair i. Default: the binarised target, decoded as "
                             "fairseq-generate does (BPE removed, <unk> escaped, detokenised)")
    parser.add_argument("--cpu", action="store_true", help="decode on CPU even with a GPU")
    parser.add_argument("--out-dir", default="mt-tune",
                        help="folder for points.jsonl, tune.csv, best.json, best.args, hyp/ and tune.png (created; "
                             "a rerun resumes in it)")
    parser.usage = "trime-mt-tune DATA --path CKPT -s S -t T [options] -- TASK_OPTIONS"
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    argv, task_options = argv[:split], [str(a) for a in argv[split + 1:]]
    args = parser.parse_args(argv)
    for option in SEARCHED:
        if option in task_options or any(o.startswith(option + "=") for o in task_options):
            parser.error(f"{option} after -- is set by trime-mt-tune itself: use --knn-ks / "
                         "--lambdas / --interp-temps / --taus / --scoring / --gen-subset / --path")
    ks = comma_values(args.knn_ks, "knn-ks", parser, low=0, kind=int)
    lambdas = comma_values(args.lambdas, "lambdas", parser, below=1)
    interp_temps = comma_values(args.interp_temps, "interp-temps", parser, low=0)
    taus = comma_values(args.taus, "taus", parser, low=0)
    if not os.path.isfile(args.path):
        parser.error(f"no checkpoint at {args.path!r}")
    # one writer per --out-dir: a second run would decode the same points and append them twice
    os.makedirs(args.out_dir, exist_ok=True)
    lock = open(os.path.join(args.out_dir, ".lock"), "w")  # held until this process exits
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        parser.error(f"another trime-mt-tune is writing {args.out_dir}: wait for it to finish or stop "
                     "it (a rerun resumes where it stopped)")
    try:
        return _tune(parser, args, task_options, ks, lambdas, interp_temps, taus)
    finally:
        lock.close()  # released now, not when the collector gets to it (in-process callers)


def _tune(parser, args, task_options, ks, lambdas, interp_temps, taus):
    """Decode every point of the grids not decoded yet, then write the report (``main``)."""
    if "--scoring" not in task_options:
        task_options += ["--scoring", "sacrebleu"]
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO)

    import torch
    from fairseq import checkpoint_utils, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.tasks.translation import TranslationTask
    from tqdm import tqdm

    import trime
    from trime.extmem.retrieval import Retriever
    from trime.extmem.search_cache import CachedSearch
    from trime.mt.tuning import corpus_bleu, grid_points, point_settings, translate

    fairseq_argv = [args.data, "--user-dir", trime.USER_DIR, "--task", "trime_translation",
                    "-s", args.source_lang, "-t", args.target_lang, "--path", args.path,
                    "--gen-subset", args.gen_subset, *task_options]
    memory_option = argparse.ArgumentParser(add_help=False)
    memory_option.add_argument("--eval-memory", default="none")
    uses_memory = memory_option.parse_known_args(task_options)[0].eval_memory == "ext"
    if uses_memory:
        fairseq_argv += ["--eval-scoring", args.scoring, "--knn-k", str(max(ks))]
    try:
        cfg = convert_namespace_to_omegaconf(
            options.parse_args_and_arch(options.get_generation_parser(), fairseq_argv))
        if cfg.scoring._name != "sacrebleu":
            parser.error(f"--scoring {cfg.scoring._name}: trime-mt-tune scores with sacrebleu "
                         "(its options --sacrebleu-tokenizer / --sacrebleu-lowercase apply)")
        task = tasks.setup_task(cfg.task)
        models, _ = checkpoint_utils.load_model_ensemble([args.path], task=task)
    except (ValueError, RuntimeError) as error:
        parser.error(str(error))
    model = models[0].eval()
    if torch.cuda.is_available() and not args.cpu:
        model.cuda()
    task.load_dataset(args.gen_subset)
    count = len(task.dataset(args.gen_subset))
    references = _read_references(args.references, count, parser) if args.references else None
    bleu_options = dict(tokenize="char" if cfg.scoring.sacrebleu_char_level
                        else cfg.scoring.sacrebleu_tokenizer,
                        lowercase=cfg.scoring.sacrebleu_lowercase)

    # paths relative to --out-dir: the folder can move with its data and model, and no path of
    # this machine is written down
    out_dir = os.path.abspath(args.out_dir)
    setup = {"data": os.path.relpath(os.path.abspath(args.data), out_dir),
             "path": os.path.relpath(os.path.abspath(args.path), out_dir),
             "direction": [args.source_lang, args.target_lang], "subset": args.gen_subset,
             "scoring": args.scoring, "task_options": task_options, "references": args.references}
    os.makedirs(os.path.join(args.out_dir, "hyp"), exist_ok=True)
    setup_path = os.path.join(args.out_dir, "setup.json")
    if os.path.isfile(setup_path):
        with open(setup_path) as f:
            previous = json.load(f)
        for key in ("data", "path"):  # an older setup.json holds absolute paths: the same place
            previous[key] = os.path.relpath(os.path.join(out_dir, previous[key]), out_dir)
        if previous != setup:
            parser.error(f"{args.out_dir} holds points decoded with other options "
                         f"({setup_path}): use another --out-dir, or remove it")
    else:
        with open(setup_path, "w") as f:
            json.dump(setup, f, indent=2)
    points_path = os.path.join(args.out_dir, "points.jsonl")
    done = _load(points_path)

    points = [{"memory": "none"}]
    if uses_memory:
        retriever, key_type = task.open_external_memory(model)
        search = CachedSearch(retriever.index, max(ks))
        points += [{"memory": "ext", **p}
                   for p in grid_points(args.scoring, ks, lambdas, interp_temps, taus)]
    for point in tqdm(points, desc="grid points", unit="point"):
        if any(row["point"] == point for row in done):
            continue
        started = time.time()
        if point["memory"] == "none":
            # fairseq's own generator: the task's build_generator would add the datastore
            generator = TranslationTask.build_generator(task, [model], cfg.generation)
        else:
            values = {k: v for k, v in point.items() if k != "memory"}
            settings = point_settings(task.memory, args.scoring, values)
            # the cache answers from the FAISS index on CPU, whatever --knn-device says
            point_retriever = Retriever(retriever.datastore, search, settings.knn_k,
                                        settings.knn_sim, settings.knn_exact_scores, device="cpu")
            generator = task.build_memory_generator([model], cfg.generation, settings,
                                                    point_retriever, key_type)
        translated = translate(task, generator, model, cfg, args.gen_subset,
                               progress=lambda b: tqdm(b, desc="decoding", unit="batch", leave=False))
        ids = sorted(translated)
        if len(ids) != count:
            raise RuntimeError(f"{count - len(ids)} pairs of {args.gen_subset} were not decoded "
                               "(too long for the model?): raise --max-len-b / the model's "
                               "positions, or filter the split")
        hypotheses = [translated[i][0] for i in ids]
        refs = references if references is not None else [translated[i][1] for i in ids]
        bleu, signature = corpus_bleu(hypotheses, refs, **bleu_options)
        if not os.path.isfile(os.path.join(args.out_dir, "ref.txt")):  # with hyp/: BLEU re-scored
            write_lines(os.path.join(args.out_dir, "ref.txt"), refs)
        hyp_path = os.path.join(args.out_dir, "hyp", _file_name(point))
        write_lines(hyp_path, hypotheses)
        row = {"point": point, "bleu": bleu, "signature": signature, "seconds": time.time() - started,
               "hypotheses": os.path.relpath(hyp_path, args.out_dir)}
        if point["memory"] == "ext":
            row["search_cache_hit_rate"] = search.hit_rate
        with open(points_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        done.append(row)
        tqdm.write(f"{point} -> BLEU {bleu:.2f} ({row['seconds']:.0f} s)")

    rows = []
    for point in points:
        row = next(r for r in done if r["point"] == point)
        rows.append({"memory": point["memory"], "knn_k": point.get("knn_k"),
                     "memory_temp": point.get("memory_temp"), "knn_lambda": point.get("knn_lambda"),
                     "knn_temp": point.get("knn_temp"), "bleu": row["bleu"], "seconds": row["seconds"],
                     "hypotheses": row["hypotheses"]})
    write_csv(os.path.join(args.out_dir, "tune.csv"), rows)
    best = max(rows, key=lambda r: r["bleu"])
    on_edge = []
    if best["memory"] == "ext":
        searched = {"knn_ks": ks, "taus": taus, "lambdas": lambdas, "interp_temps": interp_temps}
        on_edge = warn_on_edges(searched, best, MT_GRIDS)
    best_options = {} if best["memory"] == "none" else {
        "--eval-memory": "ext", "--eval-scoring": args.scoring, "--knn-k": best["knn_k"],
        "--knn-lambda": best["knn_lambda"], "--knn-temp": best["knn_temp"],
        "--memory-temp": best["memory_temp"]}
    best_options = {k: v for k, v in best_options.items() if v is not None}
    signature = done[0]["signature"]
    report = {"best": best, "options": best_options, "no_memory_bleu": rows[0]["bleu"],
              "signature": signature, "pairs": count, "on_edge": on_edge, **setup}
    write_best_args(args.out_dir, best_options)
    with open(os.path.join(args.out_dir, "best.json"), "w") as f:
        json.dump(report, f, indent=2)
    plot(rows, best, os.path.join(args.out_dir, "tune.png"),
         "T (kNN-MT temperature)" if args.scoring == "knnlm" else "τ′ (Eq. 8)")
    chosen = option_words(best_options) or "no memory"
    print(f"no memory: BLEU {rows[0]['bleu']:.2f}; best: {chosen} -> BLEU {best['bleu']:.2f} on "
          f"{count} pairs of {args.gen_subset} ({signature}); written to {args.out_dir}/")


if __name__ == "__main__":
    main()
