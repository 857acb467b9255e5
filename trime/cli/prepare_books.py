"""`trime-prepare-books`: your BooksCorpus copy as the paper's domain-adaptation corpus (§5.3, Table 5).

    trime-prepare-books books --raw path/to/bookcorpus --dict wt103/data-bin/dict.txt

BooksCorpus is not redistributable: bring your own copy, a folder of plain-text books (one
``.txt`` file per book, searched recursively). Whole books are shuffled (``--seed``) and dealt to
test, then valid, then train until each holds its share of tokens (the paper: 250K, 250K and
100M). Each book is tokenised like WikiText-103 (Moses with hyphens split as ``@-@`` and ``@,@`` /
``@.@`` inside numbers; case kept), one paragraph per line under a `` = Title = `` line, so
``--doc-boundary title`` finds the books. OUT/raw/{train,valid,test}.txt and OUT/books.json (which
book went where, token counts) are written, then ``fairseq-preprocess --only-source --srcdict``
binarises them with the WikiText-103 dictionary (Table 5 scores WikiText-103 models on them;
other words become ``<unk>``). Every finished step is skipped on a rerun.
"""

import argparse
import json
import logging
import os
import random
import re

from trime.cli.parsing import HelpFormatter
from trime.errors import console_script
from trime.files import open_whole

SPLITS = ("test", "valid", "train")  # dealt in this order: the small shares first
PAPER_TOKENS = {"train": 100_000_000, "valid": 250_000, "test": 250_000}

logger = logging.getLogger("trime.prepare_books")


class WikiTextTokenizer:
    """Text as WikiText-103 writes it: Moses tokens, ``@-@`` hyphens, ``@,@`` / ``@.@`` in numbers."""

    def __init__(self):
        from sacremoses import MosesTokenizer

        self.moses = MosesTokenizer(lang="en")

    def __call__(self, text: str) -> str:
        text = re.sub(r"(?<=\d),(?=\d)", " @,@ ", text)
        text = re.sub(r"(?<=\d)\.(?=\d)", " @.@ ", text)
        return self.moses.tokenize(text, aggressive_dash_splits=True, escape=False,
                                   return_str=True, protected_patterns=[r"@[,.]@"])


def book_lines(path: str, tokenize) -> list:
    """A book as WikiText lines: an empty line, `` = Title = ``, an empty line, then one line per
    paragraph (paragraphs: text between blank lines); fairseq counts one <eos> per line."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    title = os.path.splitext(os.path.basename(path))[0].replace("_", " ").replace("-", " ")
    lines = [" ", f" = {tokenize(title)} = ", " "]
    for block in re.split(r"\n\s*\n", text):
        paragraph = tokenize(" ".join(block.split()))
        if paragraph:
            lines.append(f" {paragraph} ")
    return lines


def tokens_of(lines) -> int:
    return sum(len(line.split()) + 1 for line in lines)


def deal_books(books, quotas: dict, tokenize, progress=None):
    """Deal ``books`` (paths, in order) to the splits of ``quotas`` ({split: tokens}) in the order
    of SPLITS, each until it holds at least its quota; the rest are left out. Yields (split,
    book, lines)."""
    remaining = [split for split in SPLITS if quotas[split] > 0]
    filled = dict.fromkeys(quotas, 0)
    for book in books:
        if not remaining:
            return
        lines = book_lines(book, tokenize)
        split = remaining[0]
        filled[split] += tokens_of(lines)
        if progress is not None:
            progress.update(tokens_of(lines))
        yield split, book, lines
        if filled[split] >= quotas[split]:
            remaining.pop(0)


@console_script
def main(argv=None):
    from tqdm import tqdm

    from trime.cli.preprocess import fairseq_preprocess
    from trime.download import check_free_space

    parser = argparse.ArgumentParser(
        prog="trime-prepare-books", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=HelpFormatter)
    parser.add_argument("out", help="output folder: raw/, books.json, data-bin/")
    parser.add_argument("--raw", required=True,
                        help="your BooksCorpus copy: a folder of .txt books (not redistributable)")
    parser.add_argument("--dict", required=True,
                        help="the WikiText-103 dictionary (trime-prepare-wikitext103 OUT/data-bin/"
                             "dict.txt): the books are scored by WikiText-103 models")
    for split in ("train", "valid", "test"):
        parser.add_argument(f"--{split}-tokens", type=int, default=PAPER_TOKENS[split],
                            help=f"tokens of {split} (whole books: at least this many)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the shuffle of the books")
    parser.add_argument("--workers", type=int, default=2, help="fairseq-preprocess workers")
    args = parser.parse_args(argv)
    quotas = {split: getattr(args, f"{split}_tokens") for split in SPLITS}
    if min(quotas.values()) < 1:
        parser.error("--train-tokens, --valid-tokens and --test-tokens must be >= 1")
    if not os.path.isfile(args.dict):
        parser.error(f"--dict {args.dict}: no such file (run trime-prepare-wikitext103 first)")
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO)
    raw = os.path.join(args.out, "raw")
    files = {split: os.path.join(raw, f"{split}.txt") for split in SPLITS}
    listing = os.path.join(args.out, "books.json")
    if not os.path.exists(listing):
        books = sorted(os.path.join(root, name) for root, _, names in os.walk(args.raw)
                       for name in names if name.endswith(".txt"))
        if not books:
            parser.error(f"--raw {args.raw}: no .txt books in it")
        random.Random(args.seed).shuffle(books)
        os.makedirs(raw, exist_ok=True)
        check_free_space(raw, 7 * sum(quotas.values()), "writing the books' splits")
        chosen = {split: [] for split in SPLITS}
        outs = {split: open(files[split] + ".partial", "w") for split in SPLITS}
        try:
            with tqdm(total=sum(quotas.values()), unit="tok", unit_scale=True, desc="books") as bar:
                for split, book, lines in deal_books(books, quotas, WikiTextTokenizer(), bar):
                    outs[split].write("\n".join(lines) + "\n")
                    chosen[split].append({"book": os.path.relpath(book, args.raw),
                                          "tokens": tokens_of(lines)})
        finally:
            for out in outs.values():
                out.close()
        short = [split for split in SPLITS if sum(b["tokens"] for b in chosen[split]) < quotas[split]]
        if short:
            parser.error(f"--raw {args.raw} holds {len(books):,} books, too few for "
                         f"{', '.join(f'{s} {quotas[s]:,}' for s in short)} tokens: give a larger "
                         "copy or smaller --*-tokens")
        for split in SPLITS:
            os.replace(files[split] + ".partial", files[split])
        with open_whole(listing) as f:
            json.dump({"seed": args.seed, "quotas": quotas,
                       "tokens": {s: sum(b["tokens"] for b in chosen[s]) for s in SPLITS},
                       "books": chosen}, f, indent=1)
    with open(listing) as f:
        prepared = json.load(f)
    if (prepared["seed"], prepared["quotas"]) != (args.seed, quotas):
        parser.error(f"{args.out} was prepared with --seed {prepared['seed']} and token shares "
                     f"{prepared['quotas']}, not {args.seed} and {quotas}: choose another OUT, or "
                     f"delete {listing} and {raw} to deal the books again")
    logger.info("tokens: " + ", ".join(f"{s} {n:,}" for s, n in prepared["tokens"].items()))
    print(fairseq_preprocess(["--only-source", "--srcdict", args.dict, "--trainpref", files["train"],
                              "--validpref", files["valid"], "--testpref", files["test"],
                              "--workers", args.workers], os.path.join(args.out, "data-bin")))


if __name__ == "__main__":
    main()
