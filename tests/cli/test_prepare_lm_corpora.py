"""trime-prepare-enwik8 and trime-prepare-wikitext103 on mock archives, fetched through file://:
the enwik8 splits equal the prep_enwik8.py rule byte for byte, both binarise, and a rerun skips
every step (the archive may be gone by then)."""

import os
import zipfile

import numpy as np
import pytest

pytest.importorskip("fairseq")

from console import run  # noqa: E402
from trime.cli.prepare_enwik8 import split_bytes, write_symbols  # noqa: E402


def prep_enwik8_rule(part: bytes) -> bytes:
    """The standard prep_enwik8.py's text of a split: decimal byte values joined by spaces, a
    newline byte written as a newline (stated here as the naive rule, byte by byte)."""
    return " ".join(str(c) if c != ord("\n") else "\n" for c in part).encode()


def _mock_enwik8(path, size=60_000, seed=0):
    rng = np.random.default_rng(seed)
    data = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    data[100:110] = b"\n" * 10  # runs of newlines; first and last bytes newlines too
    data[0], data[-1] = 10, 10
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("enwik8", bytes(data))
    return bytes(data)


def test_symbols_equal_the_prep_enwik8_rule_across_chunks(tmp_path):
    data = bytes(range(256)) * 3 + b"\n\n" + bytes([10, 32, 10])
    for chunk in (1, 7, 1 << 20):
        write_symbols(data, str(tmp_path / "x.txt"), chunk=chunk)
        assert (tmp_path / "x.txt").read_bytes() == prep_enwik8_rule(data), chunk
    parts = split_bytes(b"abcdefghij", held_out=3)
    assert parts == {"train": b"abcd", "valid": b"efg", "test": b"hij"}
    with pytest.raises(ValueError, match="nothing to train on"):
        split_bytes(b"abcdef", held_out=3)


@pytest.mark.e2e
def test_prepare_enwik8_from_a_file_url(tmp_path):
    data = _mock_enwik8(tmp_path / "enwik8.zip")
    out = tmp_path / "out"
    argv = [out, "--archive", (tmp_path / "enwik8.zip").as_uri(), "--held-out-bytes", 5000]
    _, log = run("trime-prepare-enwik8", *argv)
    assert "not the standard file" in log  # 60,000 bytes, not 10^8
    held = 5000
    expected = {"train": data[:-2 * held], "valid": data[-2 * held:-held], "test": data[-held:]}
    for split, part in expected.items():
        assert (out / "raw" / f"{split}.txt").read_bytes() == prep_enwik8_rule(part), split
        assert (out / "raw" / f"{split}.txt.raw").read_bytes() == part
    assert (out / "enwik8.zip").exists()  # downloaded into OUT, kept for reruns
    symbols = {line.split()[0] for line in open(out / "data-bin" / "dict.txt")
               if not line.startswith("madeupword")}  # fairseq pads the dictionary to 8
    assert symbols <= {str(value) for value in range(256)} and len(symbols) >= 250
    assert all((out / "data-bin" / f"{split}.bin").exists() for split in ("train", "valid", "test"))
    # a rerun skips every step: it needs neither the archive nor a new fairseq-preprocess
    os.remove(tmp_path / "enwik8.zip")
    os.remove(out / "enwik8.zip")
    stamp = os.path.getmtime(out / "data-bin" / "train.bin")
    _, log = run("trime-prepare-enwik8", *argv)
    assert os.path.getmtime(out / "data-bin" / "train.bin") == stamp


def test_prepare_enwik8_holds_out_whole_books_as_bytes(tmp_path):
    """--books: a folder of books as the byte stream, valid and test held out whole, written by the
    same prep_enwik8 rule; bad choices are refused."""
    books = tmp_path / "books"
    books.mkdir()
    texts = {f"book{i}.txt": (f"Book {i}\n\nCaf\xe9 line {i}.\n" * (30 + i)).encode("latin-1")
             for i in range(5)}
    for name, data in texts.items():
        (books / name).write_bytes(data)
    (books / "README").write_text("not a book")  # only the .txt files are books
    out = tmp_path / "out"
    run("trime-prepare-enwik8", out, "--books", books, "--valid-books", "book3.txt",
        "--test-books", "book1.txt,book4.txt")
    expected = {"train": texts["book0.txt"] + texts["book2.txt"], "valid": texts["book3.txt"],
                "test": texts["book1.txt"] + texts["book4.txt"]}
    for split, part in expected.items():
        assert (out / "raw" / f"{split}.txt").read_bytes() == prep_enwik8_rule(part), split
    assert (out / "data-bin" / "train.bin").exists()
    for argv, message in (
            (["--books", books, "--valid-books", "nope.txt", "--test-books", "book1.txt"], "no book nope.txt"),
            (["--books", books, "--valid-books", "book1.txt", "--test-books", "book1.txt"], "both valid and test"),
            (["--books", books, "--valid-books", "book1.txt"], "needs --valid-books and --test-books"),
            (["--books", books, "--valid-books", "a", "--test-books", "b", "--held-out-bytes", 9], "drop --archive"),
            (["--test-books", "book1.txt"], "go with --books")):
        code, log = run("trime-prepare-enwik8", tmp_path / "bad", *argv, check=False)
        assert code != 0 and message in log, message


@pytest.mark.e2e
def test_prepare_wikitext103_from_a_file_url(tmp_path):
    lines = {split: [f" = Title {split} = ", " the cat sat on the mat <unk> . ", ""] * n
             for split, n in (("train", 50), ("valid", 3), ("test", 4))}
    with zipfile.ZipFile(tmp_path / "wikitext-103-v1.zip", "w") as archive:
        for split, text in lines.items():
            archive.writestr(f"wikitext-103/wiki.{split}.tokens", "\n".join(text) + "\n")
    out = tmp_path / "out"
    _, log = run("trime-prepare-wikitext103", out, "--archive",
                 (tmp_path / "wikitext-103-v1.zip").as_uri())
    assert "the published WikiText-103 has 103,227,021" in log
    for split, text in lines.items():
        assert (out / "raw" / f"wiki.{split}.tokens").read_text() == "\n".join(text) + "\n"
    words = [line.split()[0] for line in open(out / "data-bin" / "dict.txt")]
    assert {"the", "cat", "Title", "train"} <= set(words) and "valid" not in words  # train's dictionary
    _, log = run("trime-prepare-wikitext103", out, "--archive", tmp_path / "missing.zip")
    assert log.strip().endswith(str(out / "data-bin"))  # done: nothing read, nothing run


def test_a_wrong_archive_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("wikitext-103-raw/wiki.train.raw", "x")
    code, log = run("trime-prepare-wikitext103", tmp_path / "a", "--archive", tmp_path / "other.zip",
                    check=False)
    assert code != 0 and "not wikitext-103-v1.zip" in log
    code, log = run("trime-prepare-enwik8", tmp_path / "b", "--archive", tmp_path / "other.zip",
                    check=False)
    assert code != 0 and "no member 'enwik8'" in log
    code, log = run("trime-prepare-enwik8", tmp_path / "c", "--archive", tmp_path / "nothing.zip",
                    check=False)
    assert code != 0 and "no file" in log


def _books(folder, count=12):
    """Books of different lengths, with hyphens and numbers, in nested folders."""
    paragraph = ("The well-known captain paid 1,250.75 pounds; \"Isn't it odd?\" she asked. "
                 "Word{i} and word{j} were seen in chapter {i}.")
    for i in range(count):
        path = folder / f"part{i % 3}" / f"book_{i:02d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n\n".join(paragraph.format(i=i, j=j) for j in range(5 + 3 * i)) + "\n")


def test_books_are_dealt_whole_and_tokenised_like_wikitext(tmp_path):
    from trime.cli.prepare_books import WikiTextTokenizer, book_lines

    assert WikiTextTokenizer()("A well-known 1,250.75 pounds, isn't it?") == \
        "A well @-@ known 1 @,@ 250 @.@ 75 pounds , isn 't it ?"
    (tmp_path / "my_book.txt").write_text("First  line\nof a paragraph.\n\n\nSecond one.\n")
    assert book_lines(str(tmp_path / "my_book.txt"), WikiTextTokenizer()) == \
        [" ", " = my book = ", " ", " First line of a paragraph . ", " Second one . "]


@pytest.mark.e2e
def test_prepare_books_splits_whole_books_and_binarises_with_the_given_dictionary(tmp_path):
    import json

    from fairseq_utils import write_dictionary

    _books(tmp_path / "corpus")
    write_dictionary(tmp_path / "wt103", num_words=20)  # w0..w19: every book word becomes <unk>
    shares = ["--train-tokens", 600, "--valid-tokens", 150, "--test-tokens", 150]
    argv = [tmp_path / "out", "--raw", tmp_path / "corpus", "--dict", tmp_path / "wt103" / "dict.txt",
            *shares]
    _, log = run("trime-prepare-books", *argv)
    listing = json.load(open(tmp_path / "out" / "books.json"))
    placed = [b["book"] for split in listing["books"].values() for b in split]
    assert len(placed) == len(set(placed))  # a book is in one split only
    for split, quota in (("train", 600), ("valid", 150), ("test", 150)):
        assert listing["tokens"][split] >= quota
        text = (tmp_path / "out" / "raw" / f"{split}.txt").read_text()
        assert text.count(" = book ") == len(listing["books"][split]) and " @-@ " in text
        assert sum(len(line.split()) + 1 for line in text.splitlines()) == listing["tokens"][split]
    assert open(tmp_path / "out" / "data-bin" / "dict.txt").read() == \
        open(tmp_path / "wt103" / "dict.txt").read()  # the WikiText-103 dictionary, not the books'
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(tmp_path / "wt103" / "dict.txt"))
    test = data_utils.load_indexed_dataset(str(tmp_path / "out" / "data-bin" / "test"), dictionary)
    ids = np.concatenate([test[i].numpy() for i in range(len(test))])
    assert len(ids) == listing["tokens"]["test"] and (ids == dictionary.unk()).mean() > 0.9
    # the same seed deals the same books; a rerun skips every step; other shares are refused
    run("trime-prepare-books", tmp_path / "again", *argv[1:])
    assert json.load(open(tmp_path / "again" / "books.json"))["books"] == listing["books"]
    stamp = os.path.getmtime(tmp_path / "out" / "data-bin" / "train.bin")
    run("trime-prepare-books", *argv)
    assert os.path.getmtime(tmp_path / "out" / "data-bin" / "train.bin") == stamp
    code, log = run("trime-prepare-books", *argv, "--seed", 2, check=False)
    assert code != 0 and "was prepared with --seed 1" in log
    code, log = run("trime-prepare-books", tmp_path / "small", *argv[1:5], "--train-tokens", 10 ** 7,
                    check=False)
    assert code != 0 and "too few" in log and not (tmp_path / "small" / "books.json").exists()
