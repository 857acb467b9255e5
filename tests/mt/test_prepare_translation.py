"""trime-prepare-translation: Moses tokens (sacremoses), joint BPE (subword-nmt), fairseq binaries;
resumable, and refusing misaligned or missing input."""

import gzip
import os

import pytest

from console import run

pytestmark = pytest.mark.e2e  # runs fairseq-preprocess


SENTENCES = [
    ("Zwei Männer, die (im Freien) spielen.", "Two men playing (outdoors)."),
    ("Ein Hund läuft durch den Schnee!", "A dog runs through the snow!"),
    ("Eine Frau liest ein Buch.", "A woman is reading a book."),
    ("Kinder spielen im Park; es ist sonnig.", "Children play in the park; it's sunny."),
]


def _raw(folder, gz=True):
    folder.mkdir()
    for split, repeat in (("train", 20), ("val", 2), ("test_2016_flickr", 2)):
        for side, lang in ((0, "de"), (1, "en")):
            text = "".join(pair[side] + "\n" for pair in SENTENCES * repeat)
            if gz and split == "train":
                with gzip.open(folder / f"{split}.{lang}.gz", "wt", encoding="utf-8") as f:
                    f.write(text)
            else:
                (folder / f"{split}.{lang}").write_text(text, encoding="utf-8")
    return folder


def _prepare(raw, out, *extra, check=True):
    return run("trime-prepare-translation", raw, out, "-s", "de", "-t", "en", "--train", "train",
               "--valid", "val", "--test", "test_2016_flickr", "--bpe-merges", "30", "--workers", "1",
               *extra, check=check)


def test_tokens_bpe_and_binaries(tmp_path):
    raw, out = _raw(tmp_path / "raw"), tmp_path / "out"
    _prepare(raw, out, "--lowercase")
    tokens = (out / "train.tok.en").read_text().splitlines()
    assert tokens[0] == "two men playing ( outdoors ) ."  # Moses splits punctuation
    assert tokens[3] == "children play in the park ; it 's sunny ."
    bpe = (out / "train.en").read_text().splitlines()
    assert len(bpe) == 80 and any("@@ " in line for line in bpe)
    assert [line.replace("@@ ", "") for line in bpe] == tokens  # BPE only splits words
    for name in ("dict.de.txt", "dict.en.txt", "train.de-en.de.bin", "valid.de-en.en.idx",
                 "test.de-en.en.bin"):
        assert (out / "bin" / name).exists(), name
    before = os.path.getmtime(out / "bpe.codes")
    _, output = _prepare(raw, out, "--lowercase")  # every step is done: nothing is redone
    assert os.path.getmtime(out / "bpe.codes") == before and "tokenised" not in output


def test_misaligned_or_missing_splits_are_refused(tmp_path):
    raw = _raw(tmp_path / "raw", gz=False)
    with open(raw / "val.en", "a") as f:
        f.write("one line too many\n")
    code, output = _prepare(raw, tmp_path / "out", check=False)
    assert code != 0 and "val: 8 lines in de, 9 in en" in output
    assert not (tmp_path / "out").exists()
    code, output = run("trime-prepare-translation", raw, tmp_path / "out", "-s", "de", "-t", "en",
                       "--valid", "dev", check=False)
    assert code != 0 and "no dev.de or dev.de.gz" in output
