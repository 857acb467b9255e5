"""Tables 2-5 at paper scale, end to end on the toy preset (paper-tiny) of the same steps: the
corpora from archives fetched through file:// (WikiText-103 and enwik8 mocks) and a folder of
books, the four models trained with the preset's options, training-set datastores saved in two
shards then merged and indexed, every row tuned on dev and scored on test; a rerun skips every
step, and --dry-run prints exactly the steps a run takes."""

import json
import math
import random
import re
import zipfile

import numpy as np
import pytest

pytest.importorskip("fairseq")

from console import run  # noqa: E402

WORDS = [f"w{i}" for i in range(60)]


def _mock_wikitext103(path):
    rng = random.Random(0)
    with zipfile.ZipFile(path, "w") as archive:
        for split, documents in (("train", 30), ("valid", 3), ("test", 3)):
            lines = []
            for doc in range(documents):
                lines += ["", f" = Title {doc} = ", ""] + [
                    " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15))) + " "
                    for _ in range(12 if split == "train" else 8)]
            archive.writestr(f"wikitext-103/wiki.{split}.tokens", "\n".join(lines) + "\n")


def _mock_enwik8(path):
    data = np.random.default_rng(0).choice(np.frombuffer(b"abcdefgh ijklmnop\nqrstuvwxyz.,",
                                                         dtype=np.uint8), 20_000)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("enwik8", data.tobytes())


def _books(folder):
    rng = random.Random(1)
    folder.mkdir()
    for i in range(10):
        (folder / f"book_{i}.txt").write_text("\n\n".join(
            " ".join(rng.choice(WORDS + ["the", "of"]) for _ in range(12)) + "." for _ in range(6)))


def _repro(table, data, work, out, *extra):
    return run("trime-repro", table, data, "--preset", "paper-tiny", "--work", work, "--out", out,
               "--in-process", *extra)[1]


def _ran(output):
    """Steps the invocation ran (not skipped)."""
    return [line.split(":")[0][3:] for line in output.splitlines()
            if line.startswith("== ") and not line.endswith("skipped")]


def _rows(out, table):
    with open(out / table / "table.json") as f:
        return json.load(f)["rows"]


@pytest.mark.e2e
def test_tables_2_to_5_end_to_end_on_the_toy_preset(tmp_path):
    _mock_wikitext103(tmp_path / "wikitext-103-v1.zip")
    _mock_enwik8(tmp_path / "enwik8.zip")
    _books(tmp_path / "raw-books")
    wt, work, out = tmp_path / "wt103", tmp_path / "work", tmp_path / "results"
    archive = ["--archive", (tmp_path / "wikitext-103-v1.zip").as_uri(), "--dstore-shards", "2"]

    # the dry run names the very steps the run takes, in order, with what each costs
    dry = _repro("table2", wt, work, out, *archive, "--dry-run")
    assert not (work / "paper-tiny").exists() and not wt.exists()  # nothing run or written
    output = _repro("table2", wt, work, out, *archive)
    ran = _ran(output)
    planned = [line[2:].split(":")[0] for line in dry.splitlines() if line.startswith("# ")]
    assert ran == planned
    assert ran[:2] == ["prepare", "bm25-batches"]
    assert {"dstore-vanilla.0", "dstore-vanilla.1", "merge-vanilla", "index-vanilla-l2",
            "dstore-trime_ext.1", "index-trime_ext-ip", "eval-table2-trimelm-ext-exact-test"} <= set(ran)
    commands = [line for line in dry.splitlines() if line and not line.startswith("#")]
    assert len(commands) == len(planned) and commands[0].startswith("trime-prepare-wikitext103 ")
    assert re.search(r"^# train-trime_ext: .*tokens per update", dry, re.M)
    rows = _rows(out, "table2")
    assert list(rows) == ["Transformer", "+ continuous cache", "TrimeLM", "TrimeLM_long", "kNN-LM",
                          "kNN-LM + continuous cache", "TrimeLM_ext (w/o M_long)", "TrimeLM_ext",
                          "kNN-LM †", "kNN-LM + continuous cache †", "TrimeLM_ext †"]
    assert all(math.isfinite(row[s]) for row in rows.values() for s in ("valid", "test"))
    assert "--knn-exact-scores" in rows["TrimeLM_ext †"]["options"]
    assert rows["TrimeLM_ext"]["paper_test"] == 15.41
    from trime.repro.paper_recipes import split_tokens

    merged = json.load(open(work / "paper-tiny" / "dstores" / "trime_ext" / "meta.json"))
    assert merged["merged_from"] == ["trime_ext.0", "trime_ext.1"]
    assert merged["num_tokens"] == split_tokens(str(wt / "data-bin"), "train")  # every train token

    # a rerun skips every step, even with the archive gone
    (tmp_path / "wikitext-103-v1.zip").unlink()
    assert _ran(_repro("table2", wt, work, out, *archive)) == []

    # Table 3 (same toy models here) and Table 5: Table 2's models on the books
    _repro("table3", wt, work, out, "--dstore-shards", "2")
    assert list(_rows(out, "table3")) == ["Transformer", "+ continuous cache*", "TrimeLM", "TrimeLM_long"]
    output = _repro("table5", wt, work, out, "--dstore-shards", "2", "--books", tmp_path / "books",
                    "--books-raw", tmp_path / "raw-books")
    ran = _ran(output)
    assert ran[0] == "prepare-books" and not any(step.startswith("train-") for step in ran)
    assert {"dstore-vanilla-books.1", "merge-trime_ext-books", "index-trime_ext-books-ip"} <= set(ran)
    rows = _rows(out, "table5")
    assert list(rows) == ["Transformer", "TrimeLM", "TrimeLM_long", "kNN-LM + continuous cache (Wiki)",
                          "TrimeLM_ext (Wiki)", "kNN-LM + continuous cache (Books)", "TrimeLM_ext (Books)"]
    assert all(math.isfinite(row["test"]) for row in rows.values())
    assert "dstores/trime_ext-books" in " ".join(rows["TrimeLM_ext (Books)"]["options"])
    assert _ran(_repro("table5", wt, work, out, "--dstore-shards", "2", "--books", tmp_path / "books")) == []

    # Table 4: enwik8 bytes, in bits per byte
    _repro("table4", tmp_path / "enwik8", tmp_path / "work4", out,
           "--archive", (tmp_path / "enwik8.zip").as_uri())
    rows = _rows(out, "table4")
    assert all(row["valid_bpc"] == pytest.approx(math.log2(row["valid"])) for row in rows.values())
    assert "dev bpc" in (out / "table4" / "table.md").read_text()


def test_bad_input_gets_errors_that_name_the_fix(tmp_path):
    from fairseq_utils import write_dictionary

    code, output = run("trime-repro", "table2", tmp_path / "wt", "--gpus", "2", "--dry-run",
                       check=False)
    assert code != 0 and "use --gpus a multiple of 4" in output
    code, output = run("trime-repro", "table2", tmp_path / "wt", "--gpus", "4", "--dstore-shards", "6",
                       "--dry-run", check=False)
    assert code != 0 and "not a multiple of --gpus 4" in output
    code, output = run("trime-repro", "table5", tmp_path / "wt", "--gpus", "4", "--dry-run", check=False)
    assert code != 0 and "--books DIR" in output
    code, output = run("trime-repro", "table10", tmp_path / "wt", "--gpus", "4", check=False)
    assert code != 0 and "--gpus: for the paper-scale tables" in output
    code, output = run("trime-repro", "table3", tmp_path / "wt", "--preset", "wt103-247m", "--dry-run",
                       check=False)
    assert code != 0 and "--preset wt103-150m" in output
    write_dictionary(tmp_path / "words", num_words=36)  # a word-level corpus is not enwik8's bytes
    code, output = run("trime-repro", "table4", tmp_path / "words", "--dry-run", check=False)
    assert code != 0 and "not a byte-level corpus" in output and "trime-prepare-enwik8" in output
