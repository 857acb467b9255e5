"""`trime-prepare-enwik8`: enwik8 as the standard prep_enwik8.py splits and writes it, then binarised.

    trime-prepare-enwik8 OUT                          # downloads enwik8.zip into OUT first
    trime-prepare-enwik8 OUT --archive enwik8.zip     # an archive you already have
    trime-prepare-enwik8 OUT --books DIR --valid-books a.txt --test-books b.txt   # books as bytes

The split (Transformer-XL / AWD-LSTM's ``prep_enwik8.py``): the last 5,000,000 bytes are test,
the 5,000,000 before them valid, the rest train. Each byte is written as its decimal value,
separated by single spaces, except a newline byte, which is written as a newline (so it ends a
line): OUT/raw/{train,valid,test}.txt, byte for byte as that script writes them, with the raw
bytes beside (``.txt.raw``). Then ``fairseq-preprocess --only-source`` into OUT/data-bin (the
dictionary of train's byte values: 204 symbols + fairseq's 4). Every finished step is skipped on
a rerun; a cut download resumes.

With ``--books DIR`` the bytes are a folder of books instead (e.g. the Gutenberg selection, a
character-level analog of enwik8): whole books are held out for valid and test (their bytes one
after the other, in the order named), the others, sorted by name, are train; written and
binarised the same way.
"""

import argparse
import logging
import os

import numpy as np

from trime.cli.parsing import HelpFormatter
from trime.errors import console_script
from trime.files import open_whole

URL = "http://mattmahoney.net/dc/enwik8.zip"
ENWIK8_BYTES = 100_000_000  # enwik8 = the first 10^8 bytes of an English Wikipedia dump
HELD_OUT_BYTES = 5_000_000  # prep_enwik8.py's num_test_chars
SPLITS = ("train", "valid", "test")

logger = logging.getLogger("trime.prepare_enwik8")

# a byte's symbol: its decimal value, or the newline itself
_SYMBOLS = np.array([b"\n" if value == 10 else str(value).encode() for value in range(256)],
                    dtype=object)


def split_bytes(data: bytes, held_out: int = HELD_OUT_BYTES):
    """{split: bytes}: the last ``held_out`` bytes test, the ``held_out`` before them valid."""
    if len(data) <= 2 * held_out:
        raise ValueError(f"{len(data):,} bytes leave nothing to train on after {2 * held_out:,} "
                         "held-out bytes")
    return {"train": data[:-2 * held_out], "valid": data[-2 * held_out:-held_out],
            "test": data[-held_out:]}


def write_symbols(data: bytes, path: str, chunk: int = 1 << 20, progress=None) -> None:
    """``data`` as prep_enwik8.py writes it (``' '.join(str(c) if c != 10 else '\\n')``), in
    chunks; through ``path.partial``."""
    with open_whole(path, "wb", ".partial") as out:
        for start in range(0, len(data), chunk):
            if start:
                out.write(b" ")
            block = np.frombuffer(data, dtype=np.uint8, count=min(chunk, len(data) - start),
                                  offset=start)
            out.write(b" ".join(_SYMBOLS[block]))
            if progress is not None:
                progress.update(len(block))


def book_bytes(folder: str, valid: list, test: list) -> dict:
    """{split: bytes} of a folder of books (its .txt files): ``valid`` and ``test`` (file names)
    held out whole, the other books (sorted by name) train."""
    names = sorted(name for name in os.listdir(folder) if name.endswith(".txt")
                   and os.path.isfile(os.path.join(folder, name)))  # as trime-prepare-books
    missing = [name for name in valid + test if name not in names]
    if missing:
        raise ValueError(f"no book {', '.join(missing)} in {folder} (it has {', '.join(names[:8])}"
                         f"{', ...' if len(names) > 8 else ''})")
    if set(valid) & set(test):
        raise ValueError(f"a book is both valid and test: {', '.join(sorted(set(valid) & set(test)))}")
    chosen = {"valid": valid, "test": test,
              "train": [name for name in names if name not in valid + test]}
    if not chosen["train"]:
        raise ValueError(f"every book of {folder} is held out: nothing to train on")

    def read(name):
        with open(os.path.join(folder, name), "rb") as f:
            return f.read()

    return {split: b"".join(read(name) for name in chosen[split]) for split in SPLITS}


def read_enwik8(archive: str) -> bytes:
    from trime.download import open_zip

    with open_zip(archive) as opened:
        if "enwik8" not in opened.namelist():
            raise ValueError(f"{archive} has no member 'enwik8' (it has "
                             f"{', '.join(opened.namelist()[:5])}): not enwik8.zip")
        return opened.read("enwik8")


@console_script
def main(argv=None):
    from tqdm import tqdm

    from trime.cli.preprocess import fairseq_preprocess
    from trime.download import check_free_space, obtain

    parser = argparse.ArgumentParser(
        prog="trime-prepare-enwik8", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=HelpFormatter)
    parser.add_argument("out", help="output folder: enwik8.zip (when downloaded), raw/, data-bin/")
    parser.add_argument("--archive", default=None, metavar="PATH_OR_URL",
                        help=f"enwik8.zip: a local file, or a URL (http(s):// or file://) to "
                             f"download into OUT (default: {URL})")
    parser.add_argument("--held-out-bytes", type=int, default=None,
                        help=f"bytes of valid and of test (default: the standard split, "
                             f"{HELD_OUT_BYTES:,} each)")
    parser.add_argument("--books", default=None, metavar="DIR",
                        help="a folder of books (.txt files) to use as the bytes instead of enwik8")
    parser.add_argument("--valid-books", default=None, metavar="NAMES",
                        help="with --books: the books (file names, comma-separated) held out for valid")
    parser.add_argument("--test-books", default=None, metavar="NAMES",
                        help="with --books: the books held out for test")
    parser.add_argument("--workers", type=int, default=2, help="fairseq-preprocess workers")
    args = parser.parse_args(argv)
    if args.books:
        if args.archive or args.held_out_bytes:
            parser.error("--books replaces enwik8: drop --archive / --held-out-bytes (books are "
                         "held out whole: --valid-books, --test-books)")
        if not (args.valid_books and args.test_books):
            parser.error("--books needs --valid-books and --test-books (file names in it)")
        if not os.path.isdir(args.books):
            parser.error(f"--books {args.books}: no such folder")
    elif args.valid_books or args.test_books:
        parser.error("--valid-books / --test-books go with --books")
    held_out = HELD_OUT_BYTES if args.held_out_bytes is None else args.held_out_bytes
    if held_out < 1:
        parser.error(f"--held-out-bytes must be >= 1, got {held_out}")
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO)
    os.makedirs(args.out, exist_ok=True)
    raw = os.path.join(args.out, "raw")
    files = {split: os.path.join(raw, f"{split}.txt") for split in SPLITS}
    if not all(os.path.exists(path) and os.path.exists(path + ".raw") for path in files.values()):
        if args.books:
            try:
                parts = book_bytes(args.books, args.valid_books.split(","), args.test_books.split(","))
            except ValueError as error:
                parser.error(str(error))
            data = b"".join(parts.values())
        else:
            # the zip (~36 MB) and then ~4 bytes of text per byte of enwik8 (~290 MB) + the raw bytes
            archive = obtain(args.archive or URL, args.out, extra_bytes=4 * ENWIK8_BYTES)
            data = read_enwik8(archive)
            if len(data) != ENWIK8_BYTES:
                logger.warning(f"{archive}: enwik8 has {len(data):,} bytes, not {ENWIK8_BYTES:,}: "
                               "not the standard file (split as asked all the same)")
            parts = split_bytes(data, held_out)
        os.makedirs(raw, exist_ok=True)
        check_free_space(raw, 4 * len(data), "writing the splits")
        with tqdm(total=len(data), unit="B", unit_scale=True, desc="bytes to symbols") as bar:
            for split, part in parts.items():
                with open_whole(files[split] + ".raw", "wb", ".partial") as f:
                    f.write(part)
                write_symbols(part, files[split], progress=bar)
        logger.info("bytes: " + ", ".join(f"{split} {len(part):,}" for split, part in parts.items()))
    print(fairseq_preprocess(["--only-source", "--trainpref", files["train"], "--validpref",
                              files["valid"], "--testpref", files["test"], "--workers", args.workers],
                             os.path.join(args.out, "data-bin")))


if __name__ == "__main__":
    main()
