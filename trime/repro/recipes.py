"""Budgets and the commands of a reproduction: data, training, datastores, tuning, evaluation.

Every model of a table gets the same budget (architecture, segment length, batch, updates).
``cpu``: the paper's 7M model (Table 9: 8 layers, d 128, FFN 512, 4 heads, adaptive input and
softmax) with L = 512 (1,600 updates: about 45 min a model on 2 CPU cores); ``tiny``: a
toy model for tests. Hyperparameters are tuned on the dev split only, with ``trime-tune``;
a grid whose optimum sits on an edge of a temperature grid is widened and tuned again.
"""

import copy
import csv
import json
import math
import os
import re
import shlex
from dataclasses import asdict, dataclass, replace
from typing import Dict, List, Tuple

import trime
from trime.core.grids import LM_GRIDS, edges_of, widened

SPLIT_FILES = {split: (f"{split}.txt", f"wiki.{split}.tokens") for split in ("train", "valid", "test")}
LOSS = re.compile(r"Loss \(base 2\): ([0-9.]+)")


@dataclass(frozen=True)
class Budget:
    """What every model of a table gets, and the tuning grids."""

    model: Tuple[str, ...]
    tokens_per_sample: int
    batch_size: int
    updates: int
    lr: float = 2e-3
    consecutive_segments: int = 4        # m for TrimeLM_long (must divide batch_size)
    local_drop_prob: float = 0.9         # p for TrimeLM_ext (Table 15)
    seed: int = 1                        # fairseq-train's --seed (models of seed s > 1: *_seed{s})
    bm25_k: int = 20
    long_memory_size: int = 12288        # S at evaluation
    doc_boundary: str = "title"
    eval_batch_size: int = 8
    knn: Tuple[str, ...] = ("--knn-k", "1024", "--knn-nprobe", "32")
    index: Tuple[str, ...] = ("--train-size", "262144")
    device: str = "cpu"
    taus: Tuple[float, ...] = (0.5, 1, 2, 4, 8)
    interp_temps: Tuple[float, ...] = (0.5, 1, 2, 4, 8)
    lambdas: Tuple[float, ...] = (0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    cache_lambdas: Tuple[float, ...] = (0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7)
    cache_thetas: Tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1)
    max_widen: int = 2                    # times a temperature grid is widened past an edge
    books_tokens: Tuple[int, int, int] = (100_000_000, 250_000, 250_000)  # Table 5: train/dev/test
    schedule: Tuple[str, ...] = ()  # fairseq-train's schedule options (default: inverse_sqrt, 10% warm-up)
    segment_lengths: Tuple[int, ...] = (150, 512, 3072)  # Table 12's L ...
    tokens_per_update: int = 6144                        # ... at this many tokens per update
    curve_sizes: Tuple[int, ...] = (0, 1024, 2048, 4096, 8192, 12288)  # Figure 3's memory sizes S
    # paper scale (trime.repro.paper.paper_budget): the authors' training of this preset on
    # ``gpus`` GPUs, datastores in ``dstore_shards`` shards, their evaluation windows
    paper: str = ""
    gpus: int = 1
    dstore_shards: int = 1
    context_window: int = 0
    break_mode: str = ""

    def describe(self) -> Dict:
        return asdict(self)


SEVEN_M = ("--arch", "transformer_lm", "--decoder-layers", "8", "--decoder-embed-dim", "128",
           "--decoder-ffn-embed-dim", "512", "--decoder-attention-heads", "4",
           "--decoder-input-dim", "128", "--decoder-output-dim", "128", "--decoder-normalize-before",
           "--adaptive-input", "--adaptive-input-cutoff", "2000,10000", "--adaptive-softmax-cutoff",
           "2000,10000", "--tie-adaptive-weights", "--adaptive-softmax-dropout", "0.1",
           "--dropout", "0.1")
# the character-level analog of Table 4 (Gutenberg books as bytes, trime-prepare-enwik8 --books):
# the authors' transformer_lm_enwik8 scaled down to the 7M model's size (8 layers, d 128, FFN 512,
# 4 heads; 208 byte symbols, so no adaptive softmax), with their optimiser family (Adam, cosine)
BYTES = ("--arch", "transformer_lm_enwik8", "--decoder-layers", "8", "--decoder-embed-dim", "128",
         "--decoder-ffn-embed-dim", "512", "--decoder-attention-heads", "4", "--decoder-input-dim", "128",
         "--decoder-output-dim", "128", "--dropout", "0.1")
TINY = ("--arch", "transformer_lm", "--decoder-layers", "2", "--decoder-embed-dim", "16",
        "--decoder-ffn-embed-dim", "32", "--decoder-input-dim", "16", "--decoder-output-dim", "16",
        "--decoder-attention-heads", "2", "--dropout", "0.1")

PRESETS = {
    # Table 5 on books with cpu: the Gutenberg selection (about 2.3M tokens) dealt to 200K test,
    # 100K dev and 1.5M for the Books datastore
    "cpu": Budget(model=SEVEN_M, tokens_per_sample=512, batch_size=8, updates=1600,
                  books_tokens=(1_500_000, 100_000, 200_000)),
    # Table 4 on bytes: L = 512, long memory chosen on dev up to the paper's 24,576 bytes
    "bytes": Budget(model=BYTES, tokens_per_sample=512, batch_size=8, updates=1600, lr=2e-3,
                    schedule=("--lr-scheduler", "cosine", "--warmup-updates", "160"),
                    long_memory_size=24576, doc_boundary="none",
                    curve_sizes=(0, 3072, 6144, 12288, 24576)),
    "tiny": Budget(model=TINY, tokens_per_sample=32, batch_size=4, updates=12, lr=5e-3,
                   consecutive_segments=2, bm25_k=3, long_memory_size=64,
                   doc_boundary="empty-line", eval_batch_size=4,
                   knn=("--knn-k", "8", "--knn-nprobe", "4"),
                   index=("--index-type", "ivfpq", "--nlist", "8", "--pq-m", "4", "--train-size", "4096"),
                   taus=(1,), interp_temps=(1,), lambdas=(0, 0.3), cache_lambdas=(0, 0.2),
                   cache_thetas=(0.3,), max_widen=0, segment_lengths=(16, 32, 64),
                   books_tokens=(300, 100, 100),
                   tokens_per_update=128, curve_sizes=(0, 32, 64)),
}

# the training recipes; vanilla = the plain LM loss (Eq. 1) on every word, no memory
MODELS = {
    "vanilla": ("--task", "trime_lm", "--criterion", "trime_loss", "--memory", "none"),
    "trime": ("--task", "trime_lm", "--criterion", "trime_loss"),
    "trime_long": ("--task", "trime_lm", "--criterion", "trime_loss", "--memory", "long",
                   "--batching", "consecutive"),
    "trime_ext": ("--task", "trime_lm", "--criterion", "trime_loss", "--memory", "ext",
                  "--batching", "bm25"),
}


def find_splits(data_dir: str) -> Dict[str, str]:
    """train / valid / test text files of a corpus folder (SPLIT.txt or wiki.SPLIT.tokens)."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data folder {data_dir!r} does not exist")
    found = {}
    for split, names in SPLIT_FILES.items():
        paths = [os.path.join(data_dir, name) for name in names]
        existing = [p for p in paths if os.path.isfile(p)]
        if not existing:
            raise FileNotFoundError(f"no {split} split in {data_dir!r}: expected one of "
                                    f"{', '.join(names)} (e.g. the unpacked WikiText-2 folder)")
        found[split] = existing[0]
    return found


class Recipes:
    """The steps of a reproduction under one budget, run by a ``Runner``."""

    def __init__(self, runner, data_dir: str, budget: Budget, suffix: str = "", books: str = None,
                 books_raw: str = None):
        self.runner, self.budget, self.data_dir = runner, budget, data_dir
        self.splits = find_splits(data_dir)
        self.bin = runner.path("bin")
        self.device = () if budget.device == "cuda" else ("--cpu",)
        self.suffix = suffix  # of every model, datastore and row name: variants of the budget
        self.tag = ""  # of the datastores of another corpus (on_corpus)
        # Table 5 (books), as steps name a folder (Runner.folder: {work}/... when inside the work)
        self.books_dir = runner.folder(books) if books else None
        self.books_raw = books_raw

    def on_corpus(self, corpus: str, corpus_name: str, tag: str) -> "Recipes":
        """The same models and evaluation on another corpus (Table 5's books), binarised with
        this one's dictionary in ``corpus``/data-bin (trime-prepare-books); its datastores are
        named with ``tag``."""
        other = copy.copy(self)
        binarised = os.path.isfile(os.path.join(corpus, "dict.txt"))
        other.bin = corpus if binarised else os.path.join(corpus, "data-bin")
        other.tag, other.splits, other.prepare = tag, {corpus_name: corpus}, not binarised
        return other

    def books(self) -> "Recipes":
        """Table 5's books: the same recipes on them, prepared first from --books-raw with this
        corpus's dictionary (whole books dealt to test, valid, then train: the budget's
        books_tokens shares)."""
        if not self.books_dir:
            raise FileNotFoundError(
                "table5 scores the models on books: give --books DIR (OUT of trime-prepare-books, "
                "or a new folder with --books-raw YOUR_COPY to make it)")
        books = self.on_corpus(self.books_dir, "books", "-books")
        if not books.prepare or os.path.exists(os.path.join(books.bin, "preprocess.done")):
            self.runner.echo(f"== prepare-books: {books.bin} is prepared, skipped")
            return books
        if not self.books_raw and not self.runner.dry_run:
            raise FileNotFoundError(
                f"--books {self.books_dir} is not prepared yet: add --books-raw YOUR_COPY (a "
                "folder of .txt books; BooksCorpus is not redistributable)")
        train, valid, test = self.budget.books_tokens
        self.runner.run("prepare-books", [
            "trime-prepare-books", self.books_dir, "--raw", self.books_raw or "YOUR_BOOKSCORPUS",
            "--dict", os.path.join(self.bin, "dict.txt"), "--train-tokens", train,
            "--valid-tokens", valid, "--test-tokens", test],
            done_if=[os.path.join(books.bin, "preprocess.done")],
            note="split the books whole, tokenise them like WikiText-103, binarise them with "
                 "this corpus's dictionary")
        return books

    def at_length(self, tokens_per_sample: int, tokens_per_update: int) -> "Recipes":
        """The same recipes for segments of L = ``tokens_per_sample`` tokens, B = round(tokens
        per update / L) segments per batch (Table 12); its models and rows are named ``*_L{L}``."""
        batch = max(1, round(tokens_per_update / tokens_per_sample))
        budget = replace(self.budget, tokens_per_sample=tokens_per_sample, batch_size=batch)
        return Recipes(self.runner, self.data_dir, budget, suffix=f"_L{tokens_per_sample}")

    def with_seed(self, seed: int) -> "Recipes":
        """The same recipes with models trained from ``seed`` (a seed study); seed 1 is the budget's
        own models, another's models and rows are named ``*_seed{seed}``."""
        if seed == self.budget.seed:
            return self
        return Recipes(self.runner, self.data_dir, replace(self.budget, seed=seed),
                       suffix=f"{self.suffix}_seed{seed}")

    def window(self) -> List[str]:
        """How an evaluation cuts the split into scored inputs (the training L by default)."""
        b = self.budget
        return ["--tokens-per-sample", str(b.tokens_per_sample)] + (
            ["--context-window", str(b.context_window)] if b.context_window else [])

    def break_mode(self) -> List[str]:
        """The task's --sample-break-mode of an evaluation (a datastore keeps every train token,
        as theirs did)."""
        return ["--sample-break-mode", self.budget.break_mode] if self.budget.break_mode else []

    def eval_device(self) -> Tuple[str, ...]:
        """fairseq-eval-lm's device options."""
        return self.device

    def note(self, kind: str, **details):
        """What a step costs, for a dry run (paper scale only)."""
        return None

    # -- data and training -----------------------------------------------------------

    def preprocess(self):
        self.runner.run("preprocess", [
            "fairseq-preprocess", "--only-source", "--trainpref", self.splits["train"],
            "--validpref", self.splits["valid"], "--testpref", self.splits["test"],
            "--destdir", self.bin, "--workers", "2"], done_if=[os.path.join(self.bin, "test.idx")])

    def checkpoint(self, model: str, drop: float = None, batching: str = None, detach=False) -> str:
        """Train ``model`` (a MODELS recipe; TrimeLM_ext variants: local-drop p, batching, detached
        memory) with the budget and return its checkpoint."""
        return self.checkpoints([dict(model=model, drop=drop, batching=batching, detach=detach)])[0]

    def checkpoints(self, models: List[Dict]) -> List[str]:
        """Train several models (``checkpoint``'s arguments, one dict each), ``runner.jobs`` at a
        time, and return their checkpoints in order."""
        return train_all([(self, model) for model in models])

    def training(self, model: str, drop: float = None, batching: str = None, detach=False):
        """(step name, fairseq-train command, checkpoint) of a model under this budget."""
        b = self.budget
        name = model + ("" if drop is None else f"_p{drop:g}") + ("" if batching is None else f"_{batching}") \
            + ("_detached" if detach else "") + self.suffix
        args = ["--user-dir", trime.USER_DIR, *MODELS[model], "--doc-boundary", b.doc_boundary]
        if model != "vanilla":  # §5.2: the first 5% of updates with the plain LM loss
            args += ["--ce-warmup-updates", str(b.updates // 20)]
        if model == "trime_long":
            args += ["--consecutive-segments", str(b.consecutive_segments)]
        if model == "trime_ext":
            args += ["--local-drop-prob", str(b.local_drop_prob if drop is None else drop)]
            if batching == "random":
                args[args.index("bm25")] = "random"
            else:
                args += ["--bm25-batches", self.bm25_batches()]
            if detach:
                args += ["--detach-memory"]
        # fairseq cuts a batch down to a multiple of --required-batch-size-multiple (default 8):
        # 12 segments would train as 8, 41 as 40. Where that would change the batch, ask for 1
        # (other batches are trained as asked already, and keep the commands of runs recorded)
        if b.batch_size > 8 and b.batch_size % 8:
            args += ["--required-batch-size-multiple", "1"]
        save_dir = self.runner.path("models", name)
        return f"train-{name}", [
            "fairseq-train", self.bin, *args, *b.model, "--tokens-per-sample", b.tokens_per_sample,
            "--batch-size", b.batch_size, "--max-update", b.updates, "--optimizer", "adam",
            "--adam-betas", "(0.9,0.98)", "--lr", b.lr,
            *(b.schedule or ("--lr-scheduler", "inverse_sqrt", "--warmup-updates", max(b.updates // 10, 1))),
            "--clip-norm", "0.1", "--seed", b.seed,
            "--num-workers", "0", "--no-epoch-checkpoints", "--disable-validation",
            "--save-interval-updates", max(b.updates // 10, 1), "--keep-interval-updates", "1",
            "--log-format", "simple", "--log-interval", "50", "--save-dir", save_dir, *self.device], \
            os.path.join(save_dir, "checkpoint_last.pt")

    def bm25_batches(self) -> str:
        b = self.budget
        path = self.runner.path(f"bm25{self.suffix}.json")
        self.runner.run(f"bm25-batches{self.suffix}", [
            "trime-bm25-batches", self.bin, "--tokens-per-sample", b.tokens_per_sample,
            # one batch of the file is one step's in-batch memory, over every GPU's segments
            "--k", b.bm25_k, "--batch-size", b.batch_size * b.gpus, "-o", path,
            # another seed's models get another chain (its random restarts); seed 1 is the
            # script's default, left out so that the records of earlier runs still match
            *([] if b.seed == 1 else ["--seed", b.seed])], done_if=[path])
        return path

    # -- external memory ---------------------------------------------------------------

    def datastore(self, checkpoint: str, metric: str) -> str:
        """The datastore of the train split with this model's keys, indexed for ``metric``
        (named after the model: models/NAME/checkpoint_last.pt -> dstores/NAME). With the
        budget's ``dstore_shards`` > 1 it is saved in shards, one per GPU at a time
        (CUDA_VISIBLE_DEVICES), each resumable, then merged by trime-merge-dstore."""
        b = self.budget
        model_name = os.path.basename(os.path.dirname(checkpoint)) + self.tag
        path = self.runner.path("dstores", model_name)
        merged = os.path.join(path, "meta.json")
        save = ["fairseq-eval-lm", self.bin, "--user-dir", trime.USER_DIR, "--task", "trime_lm",
                "--path", checkpoint, "--gen-subset", "train", *self.window(),
                "--batch-size", b.eval_batch_size, "--doc-boundary", b.doc_boundary, "--num-workers", "0"]
        shards = b.dstore_shards
        if shards == 1:
            self.runner.run(f"dstore-{model_name}", [*save, "--save-dstore", path, *self.eval_device()],
                            done_if=[merged], note=self.note("dstore", shards=1))
        else:
            steps = [(f"dstore-{model_name}.{shard}", [
                *save, "--save-dstore", f"{path}.{shard}", *self.eval_device(), "--num-shards", shards,
                "--shard-id", shard], dict(
                    env={"CUDA_VISIBLE_DEVICES": str(shard % b.gpus)} if b.device == "cuda" else None,
                    done_if=[os.path.join(f"{path}.{shard}", "meta.json")],
                    note=self.note("dstore", shards=shards) if shard == 0 else None))
                for shard in range(shards)]
            for wave in range(0, shards, b.gpus):  # one shard per GPU at a time
                if not os.path.exists(merged):
                    self.runner.run_many(steps[wave:wave + b.gpus],
                                         jobs=b.gpus if b.device == "cuda" else 1)
            self.runner.run(f"merge-{model_name}", [
                "trime-merge-dstore", path, *[f"{path}.{shard}" for shard in range(shards)]],
                done_if=[merged], note=f"merge {shards} shards without holding the keys in memory; "
                                      "the shard folders can be deleted after")
        index = os.path.join(path, f"index.{metric}.faiss")
        self.runner.run(f"index-{model_name}-{metric}", [
            "trime-build-index", path, "--metric", metric, *b.index], done_if=[index],
            note=self.note("index"))
        return path

    # -- tuning and evaluation -----------------------------------------------------------

    def _grids(self, scoring, memory_options):
        b = self.budget
        uses_ext = any(o.endswith("ext") for o in memory_options)
        span = any(o.startswith("local") for o in memory_options)
        grids = {}
        if scoring == "trime":
            grids["taus"] = list(b.taus)
        if uses_ext:
            grids["interp_temps"], grids["lambdas"] = list(b.interp_temps), list(b.lambdas)
        if scoring == "cache" or (scoring == "knnlm" and span):
            grids["cache_lambdas"], grids["cache_thetas"] = list(b.cache_lambdas), list(b.cache_thetas)
        return grids

    def tune(self, row: str, checkpoint: str, scoring: str, memory_options) -> Dict:
        """trime-tune on dev; widen a temperature grid whose optimum sits on its edge. Returns
        best.json plus {"grids": the last grids, "on_edge": grids whose optimum is on an edge}."""
        b = self.budget
        row += self.suffix
        grids = self._grids(scoring, memory_options)
        for attempt in range(b.max_widen + 1):
            tag = "" if attempt == 0 else f"-widened{attempt}"
            out = self.runner.path("tune", row + tag)
            self.runner.run(f"tune-{row}{tag}", note=self.note("tune", memory=memory_options), argv=[
                "trime-tune", self.bin, "--path", checkpoint, "--gen-subset", "valid",
                *self.window(), "--batch-size", b.eval_batch_size,
                *self.device, "--scoring", scoring,
                *[a for name, values in grids.items()
                  for a in (f"--{name.replace('_', '-')}", ",".join(f"{v:g}" for v in values))],
                "--out-dir", out, "--", "--doc-boundary", b.doc_boundary, *self.break_mode(),
                *memory_options],
                done_if=[os.path.join(out, "best.json")])
            if self.runner.dry_run:  # the test command reads the values trime-tune writes
                return {"best": {"perplexity": math.nan}, "options": {}, "grids": grids,
                        "on_edge": [], "args_file": os.path.join(out, "best.args")}
            with open(os.path.join(out, "best.json")) as f:
                best = json.load(f)
            edges = edges_of(grids, best["best"])
            on_edge = [name for name, _ in edges]
            widen = [(name, side) for name, side in edges if LM_GRIDS[name][1] == "scale"]
            if not widen or attempt == b.max_widen:
                break
            for name, side in widen:  # one more factor of 4 beyond the edge that holds the optimum
                grids[name] = widened(grids[name], side, "scale")
        return dict(best, grids=grids, on_edge=on_edge)

    def evaluate(self, row: str, checkpoint: str, split: str, options) -> float:
        """Perplexity of ``checkpoint`` on ``split`` with fairseq-eval-lm and these options."""
        b = self.budget
        name = f"eval-{row}{self.suffix}-{split}"
        self.runner.run(name, note=self.note("eval", split=split, memory=options), argv=[
            "fairseq-eval-lm", self.bin, "--user-dir", trime.USER_DIR, "--task", "trime_lm",
            "--path", checkpoint, "--gen-subset", split, *self.window(), *self.break_mode(),
            "--batch-size", b.eval_batch_size, "--doc-boundary", b.doc_boundary, "--num-workers", "0",
            *self.eval_device(), *options])
        if self.runner.dry_run:
            return math.nan
        losses = LOSS.findall(self.runner.log_text(name))
        if not losses:
            raise RuntimeError(f"no 'Loss (base 2)' line in the log of step {name}")
        loss = float(losses[-1])
        if not math.isfinite(loss):
            raise FloatingPointError(f"step {name}: non-finite loss {loss}")
        return 2 ** loss

    def memory_curve(self, checkpoint: str, scoring: str, options) -> Dict[int, float]:
        """Dev perplexity at each long-memory size S of the budget (trime-memory-curve, Figure 3),
        by S."""
        b = self.budget
        name = os.path.basename(os.path.dirname(checkpoint))
        out = self.runner.path("curves", f"{name}-{scoring}")
        self.runner.run(f"curve-{name}-{scoring}", [
            "trime-memory-curve", self.bin, "--path", checkpoint, "--sizes",
            ",".join(str(size) for size in b.curve_sizes), "--tokens-per-sample", b.tokens_per_sample,
            "--batch-size", b.eval_batch_size, "--doc-boundary", b.doc_boundary, "--scorings", scoring,
            *options, *self.device, "--out-dir", out], done_if=[os.path.join(out, "curve.csv")])
        if self.runner.dry_run:
            return {size: math.nan for size in b.curve_sizes}
        with open(os.path.join(out, "curve.csv")) as f:
            rows = list(csv.DictReader(f))
        return {int(row["memory_size"]): float(row["perplexity"]) for row in rows}

    def options_of(self, best: Dict) -> List[str]:
        if "args_file" in best:  # a dry run: the shell reads them from trime-tune's best.args
            return [f"$(cat {shlex.quote(best['args_file'])})"]
        return [str(a) for option, value in best["options"].items() for a in (option, value)]


def with_overrides(budget: Budget, **changes) -> Budget:
    return replace(budget, **{k: v for k, v in changes.items() if v is not None})


def train_all(models) -> List[str]:
    """Train models of one or more budgets (``(recipes, checkpoint() arguments)`` pairs, e.g.
    Table 12's segment lengths), the runner's ``jobs`` at a time; their checkpoints in order."""
    steps = [recipes.training(**arguments) for recipes, arguments in models]
    models[0][0].runner.run_many([
        (name, argv, {"note": recipes.note("train", model=arguments["model"])})
        for (recipes, arguments), (name, argv, _) in zip(models, steps)])
    return [checkpoint for _, _, checkpoint in steps]
