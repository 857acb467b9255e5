"""`trime-repro TABLE DATA`: reproduce one of the paper's tables (results/<table>/).

Runs every step the table's rows need — preprocessing, training each model with the same
budget, datastores and indexes, tuning on dev with trime-tune, scoring dev and test with
fairseq-eval-lm — and skips the steps already done, so an interrupted or partial run
continues where it stopped when the same command is run again. Writes table.md and
table.json (rows, tuned values, every command with its wall time, commit, machine, budget),
and orderings.md: the paper's orderings checked on every table written so far.

    trime-repro table10 path/to/wikitext-2 --work runs/repro --out results

`trime-repro authors NAME DATA` evaluates one of the authors' released models instead
(docs/authors-checkpoints.md; `trime-repro authors --help`).
"""

import argparse
import os
import sys
import time

from trime.cli.parsing import HelpFormatter
from trime.errors import console_script, one_line


def run_table(parser, args, work, make_recipes, jobs=1, usage_errors=()):
    """Run (or with --dry-run print) the steps of ``args.table`` in ``work`` with the recipes that
    ``make_recipes(runner)`` gives, then write results/<table>/ and orderings.md. Bad data is an
    error that names the fix; ``usage_errors``: exceptions that are the command line's fault."""
    import trime
    from trime.repro.orderings import write_orderings
    from trime.repro.runner import DryRun, Runner, StepMismatch
    from trime.repro.tables import TABLES, write_table

    started = time.time()
    runner = DryRun(work, user_dir=trime.USER_DIR) if args.dry_run else \
        Runner(work, in_process=args.in_process, jobs=jobs)
    try:
        recipes = make_recipes(runner)
        rows = TABLES[args.table].rows(recipes)
    except (FileNotFoundError, StepMismatch) as error:
        parser.exit(2, one_line(error, parser.prog) + "\n")  # the data, not the usage, is wrong
    except usage_errors as error:
        parser.error(str(error))
    if args.dry_run:
        return
    print(write_table(args.table, rows, recipes, os.path.join(args.out, args.table), started))
    write_orderings(args.out)  # the paper's orderings over every table written so far


def paper_main(parser, args):
    """A paper-scale table (Tables 2-5, ``trime.repro.paper_tables``): every step from the
    corpus archive to the rows, with the authors' hyperparameters on --gpus GPUs; --dry-run prints
    the steps with what each costs."""
    from trime.repro.paper import PAPER_TABLES
    from trime.repro.paper_recipes import paper_recipes

    preset = args.preset or PAPER_TABLES[args.table].preset
    if preset not in (PAPER_TABLES[args.table].preset, "paper-tiny"):
        parser.error(f"{args.table} is a paper-scale table: --preset {PAPER_TABLES[args.table].preset} "
                     "(or paper-tiny, a toy of the same steps)")
    if args.updates is not None or args.jobs != 1 or args.seed is not None:
        parser.error("--updates, --jobs and --seed are for the WikiText-2-sized presets; the paper "
                     "presets train the authors' updates (seed 1) on --gpus GPUs")
    if args.gpus < 1:
        parser.error(f"--gpus must be >= 1, got {args.gpus}")
    device = args.device or ("cpu" if preset == "paper-tiny" else "cuda")
    # one work folder per preset: its models serve each of its tables (2 and 5); a corpus or a
    # number of GPUs that does not fit the preset is a ValueError, the command line's fault
    run_table(parser, args, os.path.join(args.work, preset), lambda runner: paper_recipes(
        runner, args.table, args.data, preset, args.gpus, device, args.dstore_shards, args.archive,
        args.books, args.books_raw), usage_errors=ValueError)


def authors_main(argv):
    """`trime-repro authors NAME DATA`: a released model, downloaded and evaluated as documented."""
    from trime.repro.authors import RELEASED, RELEASED_MT, URL, reproduce
    from trime.repro.runner import Runner, StepMismatch

    parser = argparse.ArgumentParser(
        prog="trime-repro authors",
        description="Download one of the TRIME authors' released models, evaluate it on dev and "
                    "test as docs/authors-checkpoints.md documents (language models: their context "
                    "windows, memory sizes and temperatures; translation: their shipped datastore "
                    "and index, their decoding), and write OUT/table.md and table.json with their "
                    "published numbers beside. Every finished step is skipped on a rerun; a cut "
                    "download resumes.",
        epilog="example:\n  trime-repro authors wiki103-150M-trime data-bin/wikitext-103 --device cuda",
        formatter_class=HelpFormatter)
    parser.add_argument("name", choices=sorted(RELEASED) + sorted(RELEASED_MT),
                        help="the released model")
    parser.add_argument("data", help="the binarised corpus it was trained on (data-bin/wikitext-103 "
                                     "or data-bin/enwik8 with dict.txt; data-bin/iwslt14.tokenized."
                                     "de-en with dict.de.txt and dict.en.txt)")
    parser.add_argument("--zip", default=None, metavar="PATH_OR_URL",
                        help=f"the model's zip: a local file, or a URL (default: {URL})")
    parser.add_argument("--sha256", default=None,
                        help="refuse a zip whose SHA-256 differs (each member's CRC-32 is always "
                             "checked; the SHA-256 is recorded in table.json)")
    parser.add_argument("--work", default="runs/authors",
                        help="downloads, unpacked models, datastores, logs and step records")
    parser.add_argument("--out", default=None, help="where table.md / table.json go (default: "
                                                    "results/authors/NAME)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda evaluates in fp16 (the 247M models on CPU take days)")
    parser.add_argument("--in-process", action="store_true",
                        help="run the steps in this process (tests)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    runner = None if args.dry_run else Runner(args.work, in_process=args.in_process)
    try:
        print(reproduce(args.name, args.data, args.work, args.out or os.path.join(
            "results", "authors", args.name), runner, args.zip, args.device, args.sha256,
            args.dry_run))
    except (FileNotFoundError, StepMismatch) as error:
        parser.exit(2, one_line(error, parser.prog) + "\n")


@console_script
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["authors"]:
        return authors_main(argv[1:])
    from trime.repro.paper import PAPER_MODELS, PAPER_TABLES
    from trime.repro.paper_tables import CPU_ANALOGS
    from trime.repro.recipes import PRESETS, Recipes, with_overrides
    from trime.repro.tables import TABLES

    parser = argparse.ArgumentParser(prog="trime-repro", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=HelpFormatter)
    parser.add_argument("table", choices=sorted(TABLES),
                        help="the paper table (or figure3: perplexity vs long-memory size) to reproduce")
    parser.add_argument("data", help="corpus folder with train / valid / test as SPLIT.txt or "
                                     "wiki.SPLIT.tokens (e.g. WikiText-2); tables 2-5: a binarised "
                                     "corpus (with dict.txt), or the folder to prepare it in "
                                     "(trime-prepare-wikitext103 / -enwik8 run first)")
    parser.add_argument("--work", default="runs/repro",
                        help="folder of checkpoints, datastores, logs and step records (reused by "
                             "every table: a model trained for one table serves the others)")
    parser.add_argument("--out", default="results", help="results/<table>/ is written here")
    parser.add_argument("--seed", type=int, default=None,
                        help="fairseq-train's --seed for every model (default 1); another seed needs "
                             "its own --work folder (table15-seeds trains its extra seeds itself)")
    parser.add_argument("--preset", choices=sorted(PRESETS) + sorted(PAPER_MODELS), default=None,
                        help="budget: cpu = the paper's 7M model, L = 512, 1,600 updates per "
                             "model (about 45 min each on 2 CPU cores; tables 7, 10-15 and figure3 "
                             "use it unless told); tiny = a toy model for tests. Tables 2-5 use "
                             "their own: wt103-247m (2, 5), wt103-150m (3), enwik8-38m (4); "
                             "paper-tiny = a toy of their steps")
    paper = parser.add_argument_group("paper-scale tables (table2-table5; docs/paper-scale.md)")
    paper.add_argument("--gpus", type=int, default=1,
                       help="GPUs of one node; the update frequency keeps the authors' tokens per "
                            "update for any number")
    paper.add_argument("--dstore-shards", type=int, default=None,
                       help="shards of each training-set datastore, saved one per GPU at a time "
                            "and each resumable (default: --gpus)")
    paper.add_argument("--archive", default=None, metavar="PATH_OR_URL",
                       help="the corpus archive when DATA is not prepared yet (default: the "
                            "official one, downloaded)")
    paper.add_argument("--books", default=None,
                       help="table5: the books binarised with the corpus's dictionary (OUT of "
                            "trime-prepare-books, or a new folder with --books-raw)")
    paper.add_argument("--books-raw", default=None,
                       help="table5: a folder of .txt books (your BooksCorpus copy, not "
                            "redistributable; with --preset cpu: e.g. the Gutenberg books) to "
                            "prepare --books from")
    parser.add_argument("--dry-run", action="store_true",
                        help="print every step's command (tables 2-5: with the disk, memory and "
                             "GPU-hours it needs); run nothing")
    parser.add_argument("--updates", type=int, default=None, help="override the preset's updates")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="where every step trains and evaluates (default: cuda for the paper "
                             "presets, cpu for the others)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="models trained at once, each with cores / jobs threads (on 2 cores, "
                             "--jobs 2 trains two 7M models about 1.2x faster than one after the other)")
    parser.add_argument("--in-process", action="store_true",
                        help="run the steps' console scripts in this process (fast start-up for "
                             "tiny configs; long runs are better isolated in subprocesses)")
    args = parser.parse_args(argv)
    if (args.books or args.books_raw) and args.table != "table5":
        parser.error("--books / --books-raw are for table5")
    cpu_analog = args.table in CPU_ANALOGS and args.preset in PRESETS
    if args.table in PAPER_TABLES and not cpu_analog:
        return paper_main(parser, args)
    if args.preset in PAPER_MODELS:
        parser.error(f"--preset {args.preset} is for the paper-scale tables "
                     f"({', '.join(sorted(PAPER_TABLES))})")
    paper_only = [f"--{name.replace('_', '-')}" for name in ("archive", "dstore_shards")
                  if getattr(args, name) not in (None, False)] + (["--gpus"] if args.gpus != 1 else [])
    if paper_only:
        parser.error(f"{' '.join(paper_only)}: for the paper-scale tables (table2-table5) only")
    budget = with_overrides(PRESETS[args.preset or "cpu"], updates=args.updates, seed=args.seed,
                            device=args.device or "cpu")
    if budget.updates < 1:
        parser.error("--updates must be >= 1")
    if args.jobs < 1 or (args.in_process and args.jobs > 1):
        parser.error("--jobs must be >= 1, and 1 with --in-process (in-process steps share sys.argv)")
    run_table(parser, args, args.work, lambda runner: Recipes(
        runner, args.data, budget, books=args.books, books_raw=args.books_raw), jobs=args.jobs)


if __name__ == "__main__":
    sys.exit(main())
