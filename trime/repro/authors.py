"""`trime-repro authors NAME DATA`: one of the TRIME authors' released models, downloaded,
evaluated on dev and test as ``docs/authors-checkpoints.md`` documents, beside their numbers.

Every released model's settings (their READMEs, ``run_pretrained_models.md``) are in ``RELEASED``
(language models: ``fairseq-eval-lm``, ``eval_argv``) and ``RELEASED_MT`` (IWSLT'14: their shipped
datastore imported, then ``fairseq-generate``, ``generate_argv``). The steps (download, unpack,
datastore, then dev and test) run through ``trime.repro.runner.Runner``, so a rerun skips what is
done and a cut download resumes.
"""

import json
import os
import re
import shlex
import time
from dataclasses import dataclass
from typing import Optional, Tuple

from trime.files import written_whole
from trime.repro.recipes import LOSS

BLEU = re.compile(r"BLEU = ([0-9.]+)")

URL = "https://nlp.cs.princeton.edu/projects/trime/pretrained_models/{name}.zip"
CHECKPOINT = "checkpoint_best.pt"


@dataclass(frozen=True)
class Released:
    """A released model and how the authors evaluated it (published dev / test: their README)."""

    corpus: str                    # wikitext-103 (perplexity) or enwik8 (bits per byte)
    published_dev: float
    published_test: float
    tokens_per_sample: int         # the checkpoint's L; scored windows = L - context window
    context_window: int
    memory_temp: float             # τ
    long_memory_size: int = 0      # 0: local memory only
    break_mode_complete: bool = False
    knn: Tuple[str, ...] = ()      # TrimeLM_ext: its datastore, index and interpolation

    @property
    def unit(self) -> str:
        return "bpc" if self.corpus == "enwik8" else "ppl"

    @property
    def eval_memory(self) -> str:
        return "local" + (",long" if self.long_memory_size else "") + (",ext" if self.knn else "")

    def published(self, name: str):
        """{row: {split: published value}}: one row, the model."""
        return {name: {"valid": self.published_dev, "test": self.published_test}}


@dataclass(frozen=True)
class ReleasedMT:
    """A released IWSLT'14 De-En model, the index shipped with its datastore, and its rows: (row,
    published test BLEU, memory options of their README's command mapped to trime's)."""

    metric: str
    rows: Tuple[Tuple[str, float, Tuple[str, ...]], ...]
    unit = "BLEU"
    corpus = "iwslt14"

    def published(self, name: str):
        return {row: {"valid": None, "test": bleu} for row, bleu, _ in self.rows}


EXT_INDEX = ("--metric", "ip", "--nlist", "4096", "--pq-m", "64", "--pq-bits", "8",
             "--train-size", "1000000")
RELEASED = {
    "wiki103-247M-trime": Released("wikitext-103", 17.10, 17.76, 3072, 2560, 1.17,
                                   break_mode_complete=True),
    "wiki103-247M-trime_long": Released("wikitext-103", 17.01, 17.64, 3072, 2560, 1.22, 12288,
                                        break_mode_complete=True),
    # their interp temp 10.5 divides raw inner products; trime's sim has 1/√d: 10.5/√1024 ≈ 0.33
    "wiki103-247M-trime_ext": Released("wikitext-103", 15.54, 15.46, 3072, 2560, 1.25, 12288,
                                       break_mode_complete=True,
                                       knn=("--knn-k", "1024", "--knn-nprobe", "32",
                                            "--knn-lambda", "0.3", "--knn-temp", "0.33")),
    "wiki103-150M-trime": Released("wikitext-103", 24.45, 25.61, 150, 86, 1.03),
    "wiki103-150M-trime_long": Released("wikitext-103", 21.76, 22.62, 150, 86, 1.07, 15000),
    "enwik8-38M-trime": Released("enwik8", 1.14, 1.12, 512, 432, 1.05),
    "enwik8-38M-trime_long": Released("enwik8", 1.08, 1.05, 512, 432, 1.10, 24576),
}


# their machine_translation/README.md: datastore saved with --dstore-fp16, 3,949,114 keys of d 512;
# decoding with beam 4, length penalty 0.6, and BLEU by sacrebleu on Moses-detokenised text
THEIR_MT_DSTORE = ("--dstore-size", "3949114", "--dim", "512", "--dstore-fp16")
MT_DECODE = ("--beam", "4", "--lenpen", "0.6", "--max-len-a", "1.2", "--max-len-b", "10",
             "--max-tokens", "4096", "--scoring", "sacrebleu", "--tokenizer", "moses", "--remove-bpe",
             "--quiet")
RELEASED_MT = {
    "iwslt14-vanilla": ReleasedMT("l2", (
        ("Transformer", 32.58, ()),
        ("kNN-MT", 33.15, ("--eval-scoring", "knnlm", "--knn-sim", "l2", "--knn-k", "32",
                           "--knn-lambda", "0.2", "--knn-temp", "100", "--knn-nprobe", "32")))),
    # their t = 15 divides raw inner products by t·√d; trime's sim has the 1/√d: --memory-temp 15
    "iwslt14-trime": ReleasedMT("ip", (
        ("TrimeMT", 33.73, ("--eval-scoring", "trime", "--knn-sim", "ip", "--knn-k", "16",
                            "--memory-temp", "15", "--knn-lambda", "0", "--knn-nprobe", "32")),)),
}


def window_options(model: Released):
    return (["--tokens-per-sample", model.tokens_per_sample, "--context-window", model.context_window]
            + (["--sample-break-mode", "complete"] if model.break_mode_complete else []))


def eval_argv(model: Released, checkpoint: str, data: str, split: str, device: str = "cpu",
              dstore: Optional[str] = None):
    """The documented ``fairseq-eval-lm`` command of a released model on ``split``."""
    import trime

    argv = ["fairseq-eval-lm", data, "--user-dir", trime.USER_DIR, "--task", "trime_lm",
            "--batch-size", 1, "--gen-subset", split, "--path", checkpoint, *window_options(model),
            "--eval-memory", model.eval_memory]
    if model.long_memory_size:
        argv += ["--long-memory-size", model.long_memory_size]
    argv += ["--memory-temp", model.memory_temp]
    if model.knn:
        argv += ["--dstore", dstore, *model.knn]
    argv += ["--cpu"] if device == "cpu" else ["--fp16"]
    return [str(a) for a in argv]


def dstore_argv(model: Released, checkpoint: str, data: str, dstore: str, device: str = "cpu"):
    """TrimeLM_ext's datastore: the training set saved with their context window."""
    import trime

    return [str(a) for a in [
        "fairseq-eval-lm", data, "--user-dir", trime.USER_DIR, "--task", "trime_lm",
        "--path", checkpoint, "--gen-subset", "train", *window_options(model)[:4],
        "--save-dstore", dstore, *(["--cpu"] if device == "cpu" else ["--fp16"])]]


def check_data(data: str, model, splits) -> None:
    """DATA must be the binarised corpus the model was trained on."""
    prepare = {"wikitext-103": "fairseq's examples/language_model/prepare-wikitext-103.sh, then "
                               "fairseq-preprocess --only-source as its README says",
               "enwik8": "the standard prep_enwik8.py split (one decimal symbol per byte), then "
                         "fairseq-preprocess --only-source",
               "iwslt14": "fairseq's prepare-iwslt14.sh, then fairseq-preprocess -s de -t en, as "
                          "their machine_translation/README.md says"}[model.corpus]
    if isinstance(model, ReleasedMT):
        needed = ["dict.de.txt", "dict.en.txt"] + [f"{s}.de-en.{lang}.bin" for s in splits
                                                   for lang in ("de", "en")]
    else:
        needed = ["dict.txt"] + [f"{s}.bin" for s in splits]
    missing = [name for name in needed if not os.path.isfile(os.path.join(data, name))]
    if missing:
        raise FileNotFoundError(f"{data} lacks {', '.join(missing)}: give the binarised {model.corpus} "
                                f"folder ({prepare})")


def generate_argv(checkpoint: str, data: str, split: str, memory=(), dstore: Optional[str] = None,
                  device: str = "cpu"):
    """Their README's decoding of IWSLT'14 test, in ``fairseq-generate --task trime_translation``."""
    import trime

    argv = ["fairseq-generate", data, "--user-dir", trime.USER_DIR, "--task", "trime_translation",
            "-s", "de", "-t", "en", "--gen-subset", split, "--path", checkpoint, *MT_DECODE]
    if memory:
        argv += ["--eval-memory", "ext", "--dstore", dstore, *memory]
    argv += ["--cpu"] if device == "cpu" else ["--fp16"]
    return [str(a) for a in argv]


def shipped_datastore(folder: str):
    """(their dstore folder, --dstore-size / --dim options) of an unpacked MT zip: the sizes are read
    from the raw files (keys fp16 [N, d], values int64 [N, 1]), not assumed."""
    found = [root for root, _, files in os.walk(folder) if {"keys.npy", "vals.npy"} <= set(files)]
    if not found:
        raise ValueError(f"{folder} holds no dstore/keys.npy and vals.npy: not a released TRIME "
                         "translation model with its datastore")
    dstore = sorted(found)[0]
    rows = os.path.getsize(os.path.join(dstore, "vals.npy")) // 8
    dim = os.path.getsize(os.path.join(dstore, "keys.npy")) // (2 * max(rows, 1))
    return dstore, ("--dstore-size", str(rows), "--dim", str(dim), "--dstore-fp16")


def unpack(zip_path: str, folder: str) -> str:
    """The checkpoint of a released zip, unpacked into ``folder`` (``folder.partial`` first, every
    member's CRC-32 checked); returns its path."""
    from trime.download import check_free_space, open_zip

    if not os.path.isdir(folder):
        with open_zip(zip_path) as archive:
            names = [n for n in archive.namelist() if os.path.basename(n) == CHECKPOINT]
            if not names:
                raise ValueError(f"{zip_path} holds no {CHECKPOINT}: not a released TRIME model")
            check_free_space(os.path.dirname(os.path.abspath(folder)),
                             sum(i.file_size for i in archive.infolist()), f"unpacking {zip_path}")
            bad = archive.testzip()
            if bad is not None:
                raise ValueError(f"{zip_path}: {bad} fails its CRC-32 check (a damaged download): "
                                 "delete the zip and run again")
            with written_whole(folder, ".partial") as partial:
                archive.extractall(partial)
    found = [os.path.join(root, CHECKPOINT) for root, _, files in os.walk(folder) if CHECKPOINT in files]
    return sorted(found)[0]


def score(log_text: str, unit: str) -> float:
    """Perplexity (2 ** loss), bits per byte (the loss in base 2) of a fairseq-eval-lm log, or the
    BLEU of a fairseq-generate log."""
    if unit == "BLEU":
        found = BLEU.findall(log_text)
        if not found:
            raise ValueError("fairseq-generate printed no BLEU")
        return float(found[-1])
    losses = LOSS.findall(log_text)
    if not losses:
        raise ValueError("fairseq-eval-lm printed no 'Loss (base 2)' line")
    loss = float(losses[-1])
    return loss if unit == "bpc" else 2 ** loss


def reproduce(name: str, data: str, work: str, out: str, runner, archive: Optional[str] = None,
              device: str = "cpu", sha256: Optional[str] = None, dry_run: bool = False,
              echo=print) -> str:
    """Evaluate released model ``name`` on dev and test; writes OUT/table.{md,json}; returns the
    markdown. ``archive``: a local zip or URL (default: the authors' URL)."""
    from trime.download import local_path, obtain, sha256 as file_sha256

    model = RELEASED.get(name) or RELEASED_MT[name]
    source = archive or URL.format(name=name)
    zip_path = local_path(source, work)
    local = zip_path == source
    folder = os.path.join(work, name)
    dstore = os.path.join(work, f"{name}-dstore")
    if dry_run:
        lines = [f"# unpack {source} into {folder}" if local else
                 f"# download {source} -> {zip_path} (resumable), unpack into {folder}"]
        steps = evaluation_steps(name, model, os.path.join(folder, name, CHECKPOINT), data, dstore,
                                 device, dry_run=True)
        return "\n".join(lines + [shlex.join(step["argv"]) for step in steps])

    check_data(data, model, ["valid", "test"] + (["train"] if getattr(model, "knn", ()) else []))
    started = time.time()
    if not os.path.isdir(folder):  # not unpacked yet: the zip is needed (downloaded if a URL)
        if not local and not os.path.isfile(zip_path):
            echo(f"== download: {source} -> {zip_path}")
        obtain(source, work)
    digest = file_sha256(zip_path) if os.path.isfile(zip_path) else None
    if sha256 and digest != sha256.lower():
        raise ValueError(f"{zip_path} has SHA-256 {digest or '(no file)'}, not the {sha256} "
                         "given: delete it and run again to download it anew")
    checkpoint = unpack(zip_path, folder)
    results = {}
    for step in evaluation_steps(name, model, checkpoint, data, dstore, device):
        runner.run(step["name"], step["argv"], done_if=step.get("done_if", ()))
        if "split" in step:
            results.setdefault(step["row"], {})[step["split"]] = score(
                runner.log_text(step["name"]), model.unit)
    return write_report(name, model, results, runner, out, source, digest, started, device)


def evaluation_steps(name: str, model, checkpoint: str, data: str, dstore: str, device: str,
                     dry_run: bool = False):
    """The runner steps after unpacking: a datastore (TrimeLM_ext: saved and indexed; translation:
    theirs imported with its index), then each row on dev and test."""
    splits = ("valid", "test")
    if isinstance(model, ReleasedMT):
        folder = os.path.dirname(checkpoint)
        theirs, sizes = ((os.path.join(folder, "dstore"), THEIR_MT_DSTORE) if dry_run
                         else shipped_datastore(folder))
        target = os.path.join(data, "dict.en.txt")
        steps = [{"name": f"{name}-datastore", "done_if": [os.path.join(dstore, "meta.json")],
                  "argv": ["trime-import-dstore", dstore, "--dstore-filename", theirs, *sizes,
                           "--dict", target, "--source-dict", os.path.join(data, "dict.de.txt"),
                           "-s", "de", "-t", "en", "--index",
                           os.path.join(theirs, f"knn_index_{model.metric}"), "--path", checkpoint,
                           "--no-progress-bar"]}]
        return steps + [{"name": f"{name}-{row}-{split}", "row": row, "split": split,
                         "argv": generate_argv(checkpoint, data, split, memory, dstore, device)}
                        for row, _, memory in model.rows for split in splits]
    steps = []
    if model.knn:
        steps += [{"name": f"{name}-datastore", "done_if": [os.path.join(dstore, "meta.json")],
                   "argv": dstore_argv(model, checkpoint, data, dstore, device)},
                  {"name": f"{name}-index", "argv": ["trime-build-index", dstore, *EXT_INDEX],
                   "done_if": [os.path.join(dstore, "index.ip.faiss")]}]
    return steps + [{"name": f"{name}-{split}", "row": name, "split": split,
                     "argv": eval_argv(model, checkpoint, data, split, device, dstore)}
                    for split in splits]


def write_report(name, model, results, runner, out: str, source, zip_sha256, started, device) -> str:
    """OUT/table.json and table.md: trime's number beside the published one, row by row."""
    from trime.repro.tables import commit_id, machine_description

    os.makedirs(out, exist_ok=True)
    unit = model.unit
    published = model.published(name)
    rows = {row: {split: {unit: round(value, 4), "published": published[row][split]}
                  for split, value in splits.items()}
            for row, splits in results.items()}
    report = {"model": name, "source": source if "://" in source else os.path.basename(source),
              "zip_sha256": zip_sha256,
              "commit": commit_id(), "machine": machine_description(device),
              "wall_seconds_this_invocation": round(time.time() - started, 1), "unit": unit,
              "rows": rows,
              "steps": {step: {"command": [os.path.basename(a) if os.path.isabs(a) else a
                                           for a in record["command"]],
                               "seconds": record.get("seconds")}
                        for step, record in runner.records.items()}}
    with open(os.path.join(out, "table.json"), "w") as f:
        json.dump(report, f, indent=1)

    def cell(value):
        return "-" if value is None else f"{value:.2f}"

    lines = [f"# {name}: trime's evaluation beside the authors' published numbers", "",
             f"| model | dev {unit} | test {unit} | published dev | published test |",
             "|---|---|---|---|---|"]
    lines += [f"| {row} | {cell(splits['valid'][unit])} | {cell(splits['test'][unit])} | "
              f"{cell(splits['valid']['published'])} | {cell(splits['test']['published'])} |"
              for row, splits in rows.items()]
    lines += ["", "Settings as in docs/authors-checkpoints.md (where trime and their code differ: "
              "see its last section). Commands and wall times: table.json."]
    markdown = "\n".join(lines) + "\n"
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(markdown)
    return markdown
