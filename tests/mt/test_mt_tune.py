"""trime-mt-tune: its grid, each point's BLEU equal to fairseq-generate's with the same options
(the shared search cache changes nothing), resuming, and bad input."""

import json
import re

import pytest

from console import run
from parallel_toy import trained_with_datastore
from trime.mt.tuning import grid_points


def test_grid_points_drop_what_lambda_zero_makes_redundant():
    knn = grid_points("knnlm", [4, 8], [0, 0.5], [1, 10], [5])
    assert knn == [{"knn_k": k, "knn_lambda": 0.5, "knn_temp": t} for k in (4, 8) for t in (1, 10)]
    trime = grid_points("trime", [4], [0, 0.5], [1, 10], [5, 10])
    assert trime == [{"knn_k": 4, "knn_lambda": lam, "knn_temp": t, "memory_temp": tau}
                     for tau in (5, 10) for lam, t in ((0, None), (0.5, 1), (0.5, 10))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return trained_with_datastore(tmp_path_factory.mktemp("mt_tune"))


def _fairseq_bleu(data, checkpoint, *options):
    _, output = run("fairseq-generate", data, "--user-dir", __import__("trime").USER_DIR,
                    "--task", "trime_translation", "-s", "de", "-t", "en", "--path", checkpoint,
                    "--beam", "3", "--batch-size", "5", "--gen-subset", "valid", "--cpu",
                    "--scoring", "sacrebleu", *options)
    return float(re.search(r"BLEU = ([0-9.]+)", output).group(1))


@pytest.mark.e2e
@pytest.mark.parametrize("scoring, sim", [("knnlm", "l2"), ("trime", "ip")])
def test_each_point_scores_as_fairseq_generate_and_a_rerun_resumes(built, tmp_path, scoring, sim):
    data, checkpoint, dstore = built
    out = tmp_path / "tune"
    command = ["trime-mt-tune", data, "--path", checkpoint, "-s", "de", "-t", "en", "--cpu",
               "--scoring", scoring, "--knn-ks", "2,6", "--lambdas", "0,0.6", "--interp-temps", "1,10",
               "--taus", "2", "--out-dir", out, "--", "--eval-memory", "ext", "--dstore", dstore,
               "--knn-sim", sim, "--beam", "3", "--batch-size", "5"]
    code, output = run(*command)
    assert code == 0, output
    rows = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()]
    expected = 1 + (4 if scoring == "knnlm" else 6)  # no memory + the grid
    assert len(rows) == expected and rows[0]["point"] == {"memory": "none"}
    assert rows[0]["bleu"] == pytest.approx(_fairseq_bleu(data, checkpoint), abs=0.01)
    assert rows[-1]["search_cache_hit_rate"] > 0.3  # later points reuse the first ones' searches
    for row in (rows[1], rows[-1]):
        point = row["point"]
        options = ["--eval-memory", "ext", "--dstore", dstore, "--knn-sim", sim, "--eval-scoring",
                   scoring, "--knn-k", point["knn_k"], "--knn-lambda", point["knn_lambda"]]
        options += ["--knn-temp", point["knn_temp"]] if point["knn_temp"] else []
        options += ["--memory-temp", point["memory_temp"]] if scoring == "trime" else []
        assert row["bleu"] == pytest.approx(_fairseq_bleu(data, checkpoint, *options), abs=0.01), point
    assert len({row["bleu"] for row in rows}) > 1  # the grid changes the translations
    best = json.loads((out / "best.json").read_text())
    assert best["best"]["bleu"] == max(row["bleu"] for row in rows)
    assert best["signature"].startswith("nrefs:1|") and "tok:13a" in best["signature"]
    # a best point on a grid's edge is named, with the values that widen the grid (every grid
    # here has two values: the best one is on an edge unless its weight is 0 or k is the lowest)
    from trime.core.grids import MT_GRIDS, edges_of

    grids = {"knn_ks": [2, 6], "lambdas": [0, 0.6], "interp_temps": [1, 10], "taus": [2]}
    edges = [name for name, _ in edges_of(grids, best["best"], MT_GRIDS)] \
        if best["best"]["memory"] == "ext" else []
    assert best["on_edge"] == edges
    words = (out / "best.args").read_text().split()  # the same options, as command-line words
    assert dict(zip(words[::2], words[1::2])) == {k: f"{v:g}" if isinstance(v, float) else str(v)
                                                   for k, v in best["options"].items()}
    for name in edges:
        assert f"widen the grid, e.g. --{name.replace('_', '-')} " in output
    assert len((out / "tune.csv").read_text().splitlines()) == expected + 1
    hypotheses = (out / rows[1]["hypotheses"]).read_text().splitlines()
    assert len(hypotheses) == 16  # the toy valid split, in order
    # every point re-scored from its files: hyp/ against ref.txt, as sacrebleu's command does
    import sacrebleu

    references = (out / "ref.txt").read_text().splitlines()
    for row in rows:
        hypotheses = (out / row["hypotheses"]).read_text().splitlines()
        assert sacrebleu.corpus_bleu(hypotheses, [references]).score == pytest.approx(row["bleu"], abs=1e-9)

    before = (out / "points.jsonl").read_text()
    code, output = run(*command)  # everything decoded: nothing again
    assert code == 0 and (out / "points.jsonl").read_text() == before
    code, output = run(*[str(c).replace("1,10", "1,3") for c in command])
    lines = (out / "points.jsonl").read_text().splitlines()  # other grid values, same set-up:
    assert lines[:expected] == before.splitlines()  # only the new points are decoded
    assert len(lines) == expected + 2  # T = 3 at k = 2 and 6
    assert len(list((out / "hyp").iterdir())) == len(lines)


@pytest.mark.e2e
def test_references_and_options_that_the_tool_sets_are_checked(built, tmp_path):
    data, checkpoint, dstore = built
    base = ["trime-mt-tune", data, "--path", checkpoint, "-s", "de", "-t", "en", "--cpu",
            "--out-dir", tmp_path / "t"]
    short = tmp_path / "short.en"
    short.write_text("one line\n")
    code, output = run(*base, "--references", short, check=False)
    assert code != 0 and "has 1 lines, the split has 16 pairs" in output
    code, output = run(*base, "--", "--knn-lambda", "0.3", check=False)
    assert code != 0 and "--knn-lambda after -- is set by trime-mt-tune" in output
    code, output = run(*base, "--", "--beam", "2", check=False)  # no memory: the plain row only
    assert code == 0 and "no memory: BLEU" in output
    code, output = run(*base, "--", "--beam", "3", check=False)
    assert code != 0 and "decoded with other options" in output


def test_a_second_run_on_the_same_out_dir_is_refused(tmp_path, capsys):
    import fcntl

    from trime.cli import mt_tune

    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"")  # never loaded: the lock is taken first
    out = tmp_path / "tune"
    out.mkdir()
    with open(out / ".lock", "w") as held:  # the first run's lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SystemExit) as stopped:
            mt_tune.main([str(tmp_path), "--path", str(checkpoint), "-s", "de", "-t", "en",
                          "--out-dir", str(out)])
    assert stopped.value.code == 2
    assert "another trime-mt-tune is writing" in capsys.readouterr().err
