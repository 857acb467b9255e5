"""trime-prepare-iwslt14 on a mock de-en.tgz laid out like IWSLT'14's: the meta-data lines go,
the title / description text stays, Moses escaping, clean-corpus-n's ratio and length rules,
valid = every 23rd pair, the test sets in fairseq's order; resumable; a wrong archive refused.
With ../shared present, our BPE step reproduces fairseq's prepared test set from its own codes."""

import os

import pytest

from console import run
from parallel_toy import TRAIN_DE, TRAIN_EN, mock_iwslt_archive as _archive
from trime.mt.iwslt14 import TEST_SETS, clean_pairs, segments, training_text

def test_the_rules_of_prepare_iwslt14():
    assert training_text(["<url>x</url>", "<title>T</title>", "a <description>b</description>"]) \
        == ["T", "a b"]
    assert segments(['<seg id="12">  Hi there  </seg>  ', "<doc>", "it\u2019s"]) == ["Hi there"]
    assert clean_pairs(["a b c", "a", "", "a b"], ["a b", "a b c d", "x", "a b c"]) == [0, 3]
    assert clean_pairs(["a " * 176], ["a " * 176]) == [] and clean_pairs(["a " * 175], ["a " * 175]) == [0]


@pytest.mark.e2e
def test_a_mock_archive_becomes_fairseq_binaries_and_a_rerun_resumes(tmp_path):
    out = tmp_path / "iwslt"
    archive = _archive(tmp_path / "de-en.tgz")
    code, output = run("trime-prepare-iwslt14", out, "--archive", archive, "--bpe-merges", "20",
                       "--workers", "1")
    assert code == 0, output
    read = lambda name: (out / name).read_text(encoding="utf-8").splitlines()  # noqa: E731
    pairs = [(d, e) for d, e in zip(["der titel", "eine rede"] + [s.lower() for s in TRAIN_DE],
                                    ["the title", "a talk"] + [s.lower() for s in TRAIN_EN])]
    assert len(read("train.tok.en")) + len(read("valid.tok.en")) == len(pairs)  # two pairs cleaned
    assert read("valid.tok.de") == [pairs[22][0], pairs[45][0]]  # every 23rd
    assert read("valid.tok.en")[0] == "that &apos;s sentence number 20 ."  # Moses escaping, lower case
    assert read("test.tok.en")[:3] == ["hello 0 it &apos;s", "hello again 0", "hello 1 it &apos;s"]
    assert len(read("test.tok.de")) == 2 * len(TEST_SETS)
    assert (out / "bin" / "preprocess.done").exists() and (out / "bin" / "dict.de.txt").exists()
    stamp = os.path.getmtime(out / "bin" / "train.de-en.en.bin")
    code, output = run("trime-prepare-iwslt14", out, "--archive", archive, "--bpe-merges", "20",
                       "--workers", "1")
    assert code == 0 and os.path.getmtime(out / "bin" / "train.de-en.en.bin") == stamp


@pytest.mark.e2e
def test_an_archive_without_the_test_sets_is_refused(tmp_path):
    archive = _archive(tmp_path / "de-en.tgz", drop=f"de-en/{TEST_SETS[2]}.de-en.en.xml")
    code, output = run("trime-prepare-iwslt14", tmp_path / "out", "--archive", archive, check=False)
    assert code != 0 and "is not IWSLT'14's de-en.tgz: it lacks IWSLT14.TED.tst2010.de-en.en.xml" in output
    code, output = run("trime-prepare-iwslt14", tmp_path / "out", "--archive", tmp_path / "none.tgz",
                       check=False)
    assert code != 0 and "no such file" in output


SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data",
                      "iwslt14.tokenized.de-en")


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data/iwslt14.tokenized.de-en absent")
def test_our_bpe_step_reproduces_fairseqs_prepared_test_set(tmp_path):
    from trime.cli.prepare_translation import apply_joint_bpe

    for lang in ("de", "en"):
        with open(os.path.join(SHARED, "tmp", f"test.{lang}"), encoding="utf-8") as f:
            (tmp_path / f"test.tok.{lang}").write_text(f.read(), encoding="utf-8")
    with open(os.path.join(SHARED, "code"), encoding="utf-8") as f:
        (tmp_path / "bpe.codes").write_text(f.read(), encoding="utf-8")
    apply_joint_bpe(str(tmp_path), ("de", "en"), ["test"], 10000)
    for lang in ("de", "en"):
        ours = (tmp_path / f"test.{lang}").read_text(encoding="utf-8").splitlines()
        with open(os.path.join(SHARED, f"test.{lang}"), encoding="utf-8") as f:
            theirs = f.read().splitlines()
        assert len(ours) == len(theirs) == 6750
        assert ours == theirs
