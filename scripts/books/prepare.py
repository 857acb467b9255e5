"""Gutenberg books as a second domain for a WikiText model (paper §5.3, Table 5, in miniature).

Splits the NLTK Gutenberg selection (15 books) into train (a datastore corpus: 13 books) and
test (2 held-out books: Austen's Persuasion, Chesterton's The Man Who Was Thursday). Text is
tokenized like WikiText (words and punctuation separated by spaces), one paragraph per line,
an empty line between books (`--doc-boundary empty-line`).

    python scripts/books/prepare.py GUTENBERG_DIR runs/books/raw
"""

import os
import re
import sys

TEST_BOOKS = ("austen-persuasion.txt", "chesterton-thursday.txt")
TOKEN = re.compile(r"[A-Za-z0-9]+(?:'[a-z]+)?|[^\sA-Za-z0-9]")


def paragraphs(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    for block in re.split(r"\n\s*\n", text):
        tokens = TOKEN.findall(block)
        if tokens:
            yield " ".join(tokens)


def main(source, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    books = sorted(name for name in os.listdir(source) if name.endswith(".txt"))
    for split, chosen in (("train", [b for b in books if b not in TEST_BOOKS]),
                          ("test", list(TEST_BOOKS))):
        with open(os.path.join(out_dir, f"{split}.txt"), "w") as f:
            for book in chosen:
                f.writelines(p + "\n" for p in paragraphs(os.path.join(source, book)))
                f.write("\n")
        print(f"{split}: {', '.join(chosen)}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
