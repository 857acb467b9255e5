"""scripts/iwslt14/run.sh (Table 6 end to end) on a mock IWSLT'14 archive with a tiny model: both
models train, both datastores are built, tuning and test decoding run, table6.md has the three
rows; a second run skips every step."""

import os
import subprocess
import sys

import pytest

from console import run
from parallel_toy import TINY_ARCH, mock_iwslt_archive

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_table6_script_runs_end_to_end_and_resumes(tmp_path):
    archive = mock_iwslt_archive(tmp_path / "de-en.tgz")
    run("trime-prepare-iwslt14", tmp_path / "iwslt", "--archive", archive, "--bpe-merges", "20",
        "--workers", "1")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               ARCH=" ".join(TINY_ARCH), MAX_EPOCH="2", MAX_TOKENS="512", CE_WARMUP_UPDATES="2",
               TRAIN_EXTRA="--num-workers 0 --warmup-updates 1", DEVICE="--cpu", KS="1,4",
               LAMBDAS="0.3", TEMPS="10", TAUS="5", TRIME_LAMBDAS="0", TRIME_TEMPS="1",
               INDEX="--index-type flat")
    command = ["bash", os.path.join(ROOT, "scripts", "iwslt14", "run.sh"),
               str(tmp_path / "iwslt" / "bin"), str(tmp_path / "work")]
    first = subprocess.run(command, env=dict(env, KEEP=str(tmp_path / "kept")), capture_output=True,
                           text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    # KEEP: every test BLEU re-scored from the kept hypotheses and references
    import sacrebleu

    for decode in ("test-knnmt", "test-trime"):
        kept = tmp_path / "kept" / decode
        references = (kept / "ref.txt").read_text().splitlines()
        for line in (kept / "tune.csv").read_text().splitlines()[1:]:
            row = dict(zip((kept / "tune.csv").read_text().splitlines()[0].split(","), line.split(",")))
            hypotheses = (kept / row["hypotheses"]).read_text().splitlines()
            assert sacrebleu.corpus_bleu(hypotheses, [references]).score == pytest.approx(float(row["bleu"]))
    assert (tmp_path / "kept" / "table6.md").read_text() == (tmp_path / "work" / "table6.md").read_text()
    table = (tmp_path / "work" / "table6.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| Transformer (vanilla)", "| + kNN-MT",
                                                     "| TrimeMT_ext (+ its datastore)"]
    assert "nrefs:1" in table
    for name in ("vanilla", "trime"):
        assert (tmp_path / "work" / name / "train.done").exists()
        assert (tmp_path / "work" / f"dstore-{name}" / "meta.json").exists()
    second = subprocess.run(command, env=env, capture_output=True, text=True)
    assert second.returncode == 0 and "== training" not in second.stdout
    assert (tmp_path / "work" / "table6.md").read_text() == table
    # one model at its own --max-tokens (the equal-tokens control), the BM25 order as one chain
    only = dict(env, MODELS="trime", TRIME_MAX_TOKENS="1024", BM25_OPTIONS="--length-buckets 1")
    third = subprocess.run([*command[:-1], str(tmp_path / "work-trime")], env=only,
                           capture_output=True, text=True)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    work = tmp_path / "work-trime"
    assert (work / "trime" / "train.done").exists() and not (work / "vanilla").exists()
    assert "'max_tokens': 1024" in (work / "trime.log").read_text()
    assert (work / "test-trime" / "best.json").exists() and not (work / "table6.md").exists()
    assert '"length_buckets": 1' in (work / "bm25_order.json").read_text()
