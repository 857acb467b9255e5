"""fairseq-train --batching consecutive --memory long, then fairseq-eval-lm --eval-memory local,long."""

import json
import math
import re

import pytest

pytest.importorskip("fairseq")

from console import USER_DIR, last_float, preprocess, run  # noqa: E402
from trime.cli.toy_corpus import write_splits  # noqa: E402

pytestmark = pytest.mark.e2e  # fairseq console scripts end to end

L = 32
MODEL = ["--arch", "transformer_lm", "--decoder-layers", "2", "--decoder-embed-dim", "32",
         "--decoder-ffn-embed-dim", "64", "--decoder-attention-heads", "2"]
DATA = ["--doc-boundary", "empty-line", "--tokens-per-sample", L]  # toy stories: empty line between


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    write_splits(root / "raw", train_stories=40, valid_stories=5, test_stories=5)
    preprocess(root / "raw", root / "bin")
    _, log = run("fairseq-train", root / "bin", *USER_DIR, "--task", "trime_lm",
                 "--criterion", "trime_loss", "--memory", "long", "--batching", "consecutive",
                 "--consecutive-segments", 4, *DATA, *MODEL, "--batch-size", 8, "--update-freq", 2,
                 "--max-update", 4, "--optimizer", "adam", "--lr", "1e-3", "--save-dir", root / "ckpt",
                 "--no-epoch-checkpoints", "--cpu", "--num-workers", 0, "--seed", 3)
    return root, log


def _eval(root, *extra):
    _, out = run("fairseq-eval-lm", root / "bin", *USER_DIR, "--task", "trime_lm", *DATA,
                 "--path", root / "ckpt" / "checkpoint_last.pt", "--gen-subset", "valid",
                 "--batch-size", 4, "--cpu", *extra)
    return last_float(r"Loss \(base 2\): ([0-9.]+)", out), out


def test_train_long_memory_then_eval_with_fifo(trained):
    root, log = trained
    assert "documents (--doc-boundary empty-line)" in log
    train_loss = last_float(r"train \| epoch \d+ \| loss ([0-9.]+)", log)
    assert math.isfinite(train_loss)
    local, eval_out = _eval(root, "--eval-memory", "local")
    # fairseq-eval-lm's output is not a terminal here: trime logs the scoring's progress itself
    assert re.search(r"TRIME: scoring valid: 6 batches, [\d,]+ tokens in \d+ s \([\d,]+ tokens/s\)",
                     eval_out)
    long, out = _eval(root, "--eval-memory", "local,long", "--long-memory-size", 500,
                      "--context-window", 8)
    assert "FIFO of 500 tokens, reset at each document" in out
    assert math.isfinite(long) and "skipping tokens with inf scores" not in out
    never, out = _eval(root, "--eval-memory", "local,long", "--long-memory-size", 500,
                       "--long-memory-reset", "never")
    assert "never reset" in out and math.isfinite(never)
    # S = 0: the FIFO stays empty, which is local memory exactly
    empty, _ = _eval(root, "--eval-memory", "local,long", "--long-memory-size", 0)
    assert empty == local
    cache, out = _eval(root, "--eval-memory", "local,long", "--eval-scoring", "cache",
                       "--cache-lambda", 0.2, "--cache-theta", 0.1)
    assert "continuous cache lambda = 0.2" in out and math.isfinite(cache)
    # trime-tune --scoring cache: its grid point (0.2, 0.1) is that fairseq-eval-lm number
    import csv
    run("trime-tune", root / "bin", "--path", root / "ckpt" / "checkpoint_last.pt",
        "--tokens-per-sample", L, "--batch-size", 4, "--cpu", "--scoring", "cache",
        "--cache-lambdas", "0,0.2", "--cache-thetas", "0.1,1", "--out-dir", root / "tune_cache",
        "--", *DATA, "--eval-memory", "local,long")
    rows = {(float(r["cache_lambda"]), float(r["cache_theta"])): float(r["loss"])
            for r in csv.DictReader(open(root / "tune_cache" / "tune.csv"))}
    assert len(rows) == 4 and abs(rows[(0.2, 0.1)] - cache) < 1e-4
    # an optimum on a grid's edge is reported, with the values that widen the grid: τ far below 1
    # sharpens the memory distribution into one-hot guesses, so the larger τ of the two wins
    _, out = run("trime-tune", root / "bin", "--path", root / "ckpt" / "checkpoint_last.pt",
                 "--tokens-per-sample", L, "--batch-size", 4, "--cpu", "--taus", "0.05,0.1",
                 "--out-dir", root / "tune_edge", "--", *DATA, "--eval-memory", "local")
    best = json.load(open(root / "tune_edge" / "best.json"))
    assert best["best"]["tau"] == 0.1 and best["on_edge"] == ["taus"]
    assert (root / "tune_edge" / "best.args").read_text() == "--memory-temp 0.1\n"  # for $(cat ...)
    assert ("the best --taus 0.1 is the largest value of the grid: the optimum may lie beyond it; "
            "widen the grid, e.g. --taus 0.05,0.1,0.2,0.4") in out


def test_bad_long_memory_options(trained):
    root, _ = trained
    code, out = run("fairseq-eval-lm", root / "bin", *USER_DIR, "--task", "trime_lm", *DATA,
                    "--path", root / "ckpt" / "checkpoint_last.pt", "--gen-subset", "valid", "--cpu",
                    "--eval-memory", "local,long", "--long-memory-size", -5, check=False)
    assert code != 0 and "--long-memory-size must be >= 0" in out
    code, out = run("fairseq-eval-lm", root / "bin", *USER_DIR, "--task", "trime_lm", *DATA,
                    "--path", root / "ckpt" / "checkpoint_last.pt", "--gen-subset", "valid", "--cpu",
                    "--eval-scoring", "cache", check=False)
    assert code != 0 and "--eval-scoring cache needs a memory" in out


def test_memory_size_curve_writes_csv_and_plot(trained):
    import csv
    import importlib.util

    root, _ = trained
    code, out = run("trime-memory-curve", root / "bin", "--path", root / "ckpt" / "checkpoint_last.pt",
                    "--sizes", "0,64,256", "--tokens-per-sample", L, "--batch-size", 4,
                    "--doc-boundary", "empty-line", "--scorings", "trime,cache", "--cpu", "--out-dir", root / "curve")
    with open(root / "curve" / "curve.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["scoring"], int(r["memory_size"])) for r in rows] == [
        ("trime", 0), ("trime", 64), ("trime", 256), ("cache", 0), ("cache", 64), ("cache", 256)]
    assert all(math.isfinite(float(r["perplexity"])) for r in rows)
    # S = 0 is local memory alone: the same number fairseq-eval-lm reports
    local, eval_out = _eval(root, "--eval-memory", "local")
    # fairseq-eval-lm's output is not a terminal here: trime logs the scoring's progress itself
    assert re.search(r"TRIME: scoring valid: 6 batches, [\d,]+ tokens in \d+ s \([\d,]+ tokens/s\)",
                     eval_out)
    assert abs(float(rows[0]["loss"]) - local) < 1e-4
    if importlib.util.find_spec("matplotlib"):
        assert (root / "curve" / "curve.png").stat().st_size > 0
    else:
        assert "pip install 'trime[plots]'" in out


def test_an_interrupted_memory_curve_scores_only_the_missing_sizes(trained, tmp_path, monkeypatch):
    """trime-memory-curve stopped after two sizes: the same command scores the other four and
    writes the curve an uninterrupted run writes; a finished curve leaves no partial file."""
    import trime.cli.memory_curve as memory_curve
    import trime.lm.harness as harness

    root, _ = trained
    real_evaluate, scored = harness.evaluate, []

    def evaluate(*args, **kwargs):
        if len(scored) == stop_after:
            raise KeyboardInterrupt  # the session ends
        scored.append(args[-1].long_memory_size)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(harness, "evaluate", evaluate)

    def curve(out):
        return [str(root / "bin"), "--path", str(root / "ckpt" / "checkpoint_last.pt"), "--sizes", "0,64,256",
                "--tokens-per-sample", str(L), "--batch-size", "4", "--doc-boundary", "empty-line",
                "--scorings", "trime,cache", "--cpu", "--out-dir", str(out)]

    stop_after = None
    memory_curve.main(curve(tmp_path / "whole"))
    scored.clear()
    stop_after = 2
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        memory_curve.main(curve(tmp_path / "cut"))
    assert scored == [0, 64] and not (tmp_path / "cut" / "curve.csv").exists()
    scored.clear()
    stop_after = None
    memory_curve.main(curve(tmp_path / "cut"))
    assert scored == [256, 0, 64, 256]  # trime's S = 256, then the cache's three sizes
    assert (tmp_path / "cut" / "curve.csv").read_text().split("\n")[0] == \
        (tmp_path / "whole" / "curve.csv").read_text().split("\n")[0]
    cut, whole = ([line.split(",")[:4] for line in (tmp_path / name / "curve.csv").read_text().splitlines()]
                  for name in ("cut", "whole"))
    assert cut == whole  # scoring, size, loss, perplexity (not the seconds)
    assert not (tmp_path / "cut" / "curve.partial.pt").exists()


def test_an_interrupted_tuning_pass_resumes_after_its_last_saved_batch(trained, tmp_path):
    """trime.lm.tuning.collect with a partial file: a pass stopped after 3 batches (its FIFO of
    long memory saved with it) goes on from batch 4 and ends with the statistics of an
    uninterrupted pass, bit for bit; a partial file of another fingerprint is not used."""
    import os

    import torch

    from trime.lm.harness import load_for_eval
    from trime.lm.tuning import collect
    from trime.partial import Partial

    root, _ = trained
    task, model, cfg, dataset = load_for_eval(
        root / "bin", root / "ckpt" / "checkpoint_last.pt", "valid", L, 0, 4, True,
        ("--doc-boundary", "empty-line", "--eval-memory", "local,long", "--long-memory-size", 100))
    forwards = []
    model.register_forward_pre_hook(lambda module, inputs: forwards.append(1))
    temperatures = [0.5, 1.0]

    def run(**resume):
        forwards.clear()
        return collect(task, model, cfg, dataset, temperatures, **resume), len(forwards)

    (whole, hits, targets), all_batches = run()
    assert all_batches == 6 and len(model.evaluation.scorer.fifo) == 100
    path = str(tmp_path / "scoring.partial.pt")
    partial, other_command = Partial(path, "A"), Partial(path, "B")
    _, first = run(max_batches=3, partial=partial, save_every=0)
    assert first == 3
    (resumed, resumed_hits, resumed_targets), rest = run(partial=partial, save_every=0)
    assert rest == 3  # batches 4-6 only
    assert torch.equal(resumed.target_score, whole.target_score) and torch.equal(resumed_targets, targets)
    assert torch.equal(resumed_hits, hits)
    for name in whole.lse_all:
        assert torch.equal(resumed.lse_all[name], whole.lse_all[name])
        assert torch.equal(resumed.lse_pos[name], whole.lse_pos[name])
    # the saved FIFO matters: resumed with an empty one, batch 4 is scored differently
    os.remove(path)
    run(max_batches=3, partial=partial, save_every=0)  # batches 1-3 saved again
    saved = partial.load()
    assert saved["batches"] == 3 and len(saved["fifo"]["labels"]) == 100
    partial.save(dict(saved, fifo=None))
    (forgetful, _, _), _ = run(partial=partial, save_every=0)
    assert not torch.equal(forgetful.lse_all["span"], whole.lse_all["span"])
    (other, _, _), again = run(partial=other_command, save_every=0)
    assert again == 6 and torch.equal(other.lse_all["span"], whole.lse_all["span"])


def test_trime_tune_passes_one_fingerprint_per_command_and_cleans_up(trained, tmp_path, monkeypatch):
    """trime-tune resumes through collect's partial file in --out-dir: the same command gives the
    same fingerprint, another grid another one, and a finished tuning leaves no partial file."""
    import trime.cli.tune as tune

    root, _ = trained
    calls, real_collect = [], tune.collect

    def spy(*args):
        calls.append((args[-1].path, args[-1].fingerprint))
        return real_collect(*args, save_every=0)  # a partial file after every batch

    monkeypatch.setattr(tune, "collect", spy)
    out = tmp_path / "tune"
    argv = [str(root / "bin"), "--path", str(root / "ckpt" / "checkpoint_last.pt"), "--tokens-per-sample",
            str(L), "--batch-size", "4", "--cpu", "--taus", "0.5,1", "--out-dir", str(out), "--",
            "--doc-boundary", "empty-line", "--eval-memory", "local,long", "--long-memory-size", "100"]
    tune.main(argv)
    tune.main(argv)
    tune.main([a if a != "0.5,1" else "1,2" for a in argv])
    assert calls[0] == calls[1] and calls[0][0] == str(out / tune.PARTIAL)
    assert calls[2][1] != calls[0][1]
    assert (out / "best.json").exists() and not (out / tune.PARTIAL).exists()
