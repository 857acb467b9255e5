"""Keep a trime-repro work folder's records in results/, so that a later session (on a fresh
machine) resumes it: the step records, tunings, memory curves and logs, with no path of this
machine in them, and the trained models as trime-keep-model copies (weights only, fp16).

    python scripts/keep_work.py WORK results/NAME-work [--models vanilla trime ...] [--hf-models none local ...]

Text files have the work folder written as {work}, trime's user dir as {user_dir}, the Python
site-packages as {site-packages} and this checkout as a relative path (tests/test_results_travel.py
checks results/ for absolute paths); a folder outside the work folder that the records name (e.g.
``--books``) is written as the word given with ``--outside PATH=WORD``. Datastores, indexes and binarised data are not kept: the
harness rebuilds them. Files already kept are overwritten with the work folder's newer copy.
"""

import argparse
import os
import shutil
import site

import trime
from trime.cli.keep_model import main as keep_model

FOLDERS = ("steps", "tune", "curves", "logs")
TEXT = (".json", ".md", ".log", ".csv", ".args", ".txt", ".jsonl")
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def portable(text: str, work: str, outside=()) -> str:
    for path, word in ((work, "{work}"), *outside, (trime.USER_DIR, "{user_dir}"),
                       *((p, "{site-packages}") for p in site.getsitepackages()),
                       (CHECKOUT + os.sep, "")):
        text = text.replace(path, word)
    return text


def _portable_file(path: str, work: str, outside=()) -> None:
    with open(path, encoding="utf-8", errors="replace") as f:
        text = portable(f.read(), work, outside)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def keep(work: str, out: str, models, outside=(), hf_models=()) -> None:
    work = os.path.abspath(work)
    outside = [(os.path.abspath(path), word) for path, word in outside]
    for folder in FOLDERS:
        for root, _, names in os.walk(os.path.join(work, folder)):
            for name in names:
                if name.endswith((".pt", ".tmp")):  # a pass's partial results (trime-tune)
                    continue
                source = os.path.join(root, name)
                target = os.path.join(out, os.path.relpath(source, work))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(source, target)
                if name.endswith(TEXT):
                    _portable_file(target, work, outside)
    for model in models:  # trime-keep-model, in this process
        keep_model([os.path.join(work, "models", model, "checkpoint_last.pt"),
                    os.path.join(out, "models", model, "checkpoint_last.pt")])
    for model in hf_models:  # trime-hf-train folders (trime-repro hf-wikitext2): no checkpoints/, fp16
        keep_model([os.path.join(work, "hf", model), os.path.join(out, "hf", model)])
        # train.json's command names the work folder
        _portable_file(os.path.join(out, "hf", model, "train.json"), work, outside)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", help="the trime-repro --work folder")
    parser.add_argument("out", help="where its records are kept (e.g. results/bytes-work)")
    parser.add_argument("--models", nargs="*", default=[],
                        help="models (folders of WORK/models) to keep, weights only in fp16")
    parser.add_argument("--hf-models", nargs="*", default=[],
                        help="trime-hf-train models (folders of WORK/hf, e.g. none local ext) to keep, "
                             "weights only in fp16; put one back at WORK/hf/NAME and its training is skipped")
    parser.add_argument("--outside", nargs="*", default=[], metavar="PATH=WORD",
                        help="a folder outside WORK that the records name, and the word written "
                             "for it (e.g. ../runs/books={books})")
    args = parser.parse_args(argv)
    outside = [pair.split("=", 1) for pair in args.outside]
    if any(len(pair) != 2 or not all(pair) for pair in outside):
        parser.error("--outside takes PATH=WORD pairs, e.g. ../runs/books={books}")
    if not os.path.isdir(os.path.join(args.work, "steps")):
        parser.error(f"{args.work} is not a trime-repro work folder (no steps/)")
    keep(args.work, args.out, args.models, outside, args.hf_models)


if __name__ == "__main__":
    main()
