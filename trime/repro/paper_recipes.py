"""The steps of a paper-scale table (Tables 2-5): the same ``Recipes`` as the WikiText-2-sized
tables, with the corpus prepared from its archive, the authors' training on ``--gpus`` GPUs
(``trime.repro.paper.train_options``), training-set datastores in the budget's shards (the
shared ``Recipes.datastore``) indexed with the paper's IVFPQ, and evaluation with their context
windows and in fp16 on a GPU.
Every step states what it costs (``note``), which ``--dry-run`` prints.
"""

import os
from typing import List, Optional, Tuple

import trime
from trime.repro import paper
from trime.repro.recipes import Recipes


def split_tokens(data_bin: str, split: str) -> Optional[int]:
    """Tokens of a binarised split (one <eos> per line included), or None before it exists."""
    path = os.path.join(data_bin, f"{split}.idx")
    if not os.path.isfile(path):
        return None
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    dataset = MMapIndexedDataset(os.path.join(data_bin, split))
    total = int(dataset.sizes.sum())  # sizes reads the dataset's mmap: keep it open till summed
    del dataset
    return total


class PaperRecipes(Recipes):
    """Recipes of one paper table under its paper budget (``paper.paper_budget``).

    Args:
        runner: a ``Runner`` (or ``DryRun``).
        table: table2 ... table5.
        corpus: the binarised corpus (a folder with dict.txt), or the folder
            ``trime-prepare-wikitext103`` / ``trime-prepare-enwik8`` makes (its data-bin/; the
            preparation is the first step).
        budget: the paper budget.
        archive: the corpus archive (a path or URL) for the preparation step (default: theirs).
        corpus_name: the corpus's name in the sizes of --dry-run (wikitext-103, enwik8, books).
        tag: appended to the datastore and step names of another corpus (Table 5's books).
        books, books_raw: Table 5's books (``Recipes.books``).
    """

    def __init__(self, runner, table: str, corpus: str, budget, archive: str = None,
                 corpus_name: str = None, tag: str = "", books: str = None, books_raw: str = None):
        self.runner, self.budget, self.table, self.archive = runner, budget, table, archive
        self.books_dir = runner.folder(books) if books else None  # as Recipes: {work}/... if inside
        self.books_raw = books_raw
        self.data_dir, self.suffix, self.tag = corpus, "", tag
        self.corpus_name = corpus_name or paper.PAPER_TABLES[table].corpus
        prepared = os.path.isfile(os.path.join(corpus, "dict.txt"))
        self.bin = corpus if prepared else os.path.join(corpus, "data-bin")
        self.prepare = not prepared  # trime-prepare-* makes data-bin/ in it
        self.splits = {"data-bin": self.bin}
        self.device = ("--cpu",) if budget.device == "cpu" else ()

    def on_corpus(self, corpus: str, corpus_name: str, tag: str) -> "PaperRecipes":
        """The same models, datastores and evaluation on another corpus (Table 5's books): a
        binarised folder, or one that trime-prepare-books makes data-bin/ in."""
        return PaperRecipes(self.runner, self.table, corpus, self.budget, corpus_name=corpus_name,
                            tag=tag)

    def tokens(self, split: str) -> int:
        """Tokens of a split: counted once the corpus is binarised, else the published count."""
        return split_tokens(self.bin, split) or paper.SPLIT_TOKENS[self.corpus_name][split]

    # -- data and training -----------------------------------------------------------

    def preprocess(self):
        """The corpus from its archive (download, checksum, split, binarise; skipped when done),
        then the check that it is the preset's."""
        if self.prepare and os.path.exists(os.path.join(self.bin, "preprocess.done")):
            # prepared (whichever archive it came from, which may be gone by now)
            self.runner.echo(f"== prepare: {self.bin} is prepared, skipped")
        elif self.prepare:
            argv = [paper.PREPARE[self.corpus_name], self.data_dir] + (
                ["--archive", self.archive] if self.archive else []) + (
                list(paper.TOY_PREPARE.get(self.corpus_name, ())) if self.budget.paper == "paper-tiny"
                else [])
            self.runner.run("prepare", argv, done_if=[os.path.join(self.bin, "preprocess.done")],
                            note="download and binarise the corpus (each finished step skipped "
                                 "on a rerun)")
        if not self.runner.dry_run or os.path.isdir(self.bin):
            paper.check_corpus(self.table, self.budget.paper, self.bin)

    def training(self, model: str, drop: float = None, batching: str = None, detach=False):
        if (drop, batching, detach) != (None, None, False):
            raise ValueError("paper presets train the paper's four models only")
        b = self.budget
        plan = paper.train_options(b.paper, model, b.gpus, self.tokens("train"))
        options = list(plan["options"])
        if "--bm25-batches" in options:
            options[options.index("--bm25-batches") + 1] = self.bm25_batches()
        if b.device == "cpu":  # the tests' toy: no fp16 on a CPU
            options.remove("--fp16")
        save_dir = self.runner.path("models", model)
        interval = max(1, min(2000, b.updates // 10))
        return f"train-{model}", [
            "fairseq-train", self.bin, "--user-dir", trime.USER_DIR, *options,
            "--doc-boundary", b.doc_boundary, "--seed", "1", "--no-epoch-checkpoints",
            "--save-interval-updates", interval, "--keep-interval-updates", "1",
            "--log-format", "simple", "--log-interval", "100", "--save-dir", save_dir,
            *self.device], os.path.join(save_dir, "checkpoint_best.pt")

    # -- evaluation ----------------------------------------------------------------------

    def eval_device(self) -> Tuple[str, ...]:
        return self.device if self.budget.device == "cpu" else ("--fp16",)  # as the authors

    def note(self, kind: str, **details) -> Optional[str]:
        preset, tokens = self.budget.paper, self.tokens
        if kind == "train":
            return paper.training_note(preset, paper.train_options(
                preset, details["model"], self.budget.gpus, tokens("train")))
        if kind == "dstore":
            return paper.datastore_note(preset, tokens("train"), details["shards"])
        if kind == "index":
            return paper.index_note(preset, tokens("train"))
        options = details["memory"]
        memory = options[options.index("--eval-memory") + 1] if "--eval-memory" in options else ""
        index = paper.index_bytes(self.dstore_tokens(options)) if "--dstore" in options else 0
        return paper.eval_note(preset, tokens(details.get("split", "valid")), memory,
                               self._long_memory(options), "--knn-exact-scores" in options, index,
                               what=("one pass over dev for the whole grid: " if kind == "tune"
                                     else ""))

    def dstore_tokens(self, memory: List[str]) -> int:
        """Keys of the datastore an evaluation searches (its corpus's train split)."""
        dstore = memory[memory.index("--dstore") + 1]
        return paper.SPLIT_TOKENS["books" if dstore.endswith("-books") else
                                  paper.PAPER_TABLES[self.table].corpus]["train"]

    @staticmethod
    def _long_memory(memory: List[str]) -> int:
        return int(memory[memory.index("--long-memory-size") + 1]) if "--long-memory-size" in memory else 0


def paper_recipes(runner, table: str, corpus: str, preset: str, gpus: int, device: str,
                  dstore_shards: int = None, archive: str = None, books: str = None,
                  books_raw: str = None) -> PaperRecipes:
    """The recipes of ``table`` at ``preset`` on ``gpus`` GPUs."""
    budget = paper.paper_budget(table, preset, gpus, device, dstore_shards)
    if budget.dstore_shards % gpus:
        raise ValueError(f"--dstore-shards {budget.dstore_shards} is not a multiple of --gpus {gpus} "
                         "(one shard per GPU at a time)")
    return PaperRecipes(runner, table, corpus, budget, archive=archive, books=books,
                        books_raw=books_raw)
