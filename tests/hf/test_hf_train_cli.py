"""trime-hf-train on a WikiText-like file: a word-level tokenizer trained on it, a GPT-2 from a
config trained with each memory's batches, a rerun resumes from the last checkpoint, and
trime-hf-eval scores the saved model."""

import json

import pytest

pytest.importorskip("transformers")

from test_hf_eval_cli import wikitext_like  # noqa: E402
from trime.cli.hf_eval import main as hf_eval  # noqa: E402
from trime.cli.hf_train import main as hf_train  # noqa: E402

TINY = ["--layers", "2", "--dim", "16", "--ffn", "32", "--heads", "2", "--tokens-per-sample", "8",
        "--batch-size", "2", "--ce-warmup-steps", "1", "--warmup-steps", "1", "--cpu"]


@pytest.mark.parametrize("memory, extra", [("none", []), ("long", ["--consecutive-segments", "2"]),
                                           ("ext", ["--bm25-k", "2"])])
def test_train_resume_and_evaluate(tmp_path, capsys, memory, extra):
    text = tmp_path / "train.txt"
    wikitext_like(text)
    out = tmp_path / memory
    argv = [str(text), "--out", str(out), "--memory", memory, "--save-steps", "2", *TINY, *extra]
    hf_train([*argv, "--max-steps", "2"])
    first = json.loads((out / "train.json").read_text())
    assert first["steps"] == 2 and not first["resumed"]
    assert (out / "tokenizer" / "tokenizer.json").is_file() and (out / "config.json").is_file()
    capsys.readouterr()
    hf_train([*argv, "--max-steps", "4"])  # trains on from the checkpoint at step 2
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("step 4/4: ") and "train_loss" in line and "s/step" in line for line in lines)
    assert not any(line.startswith("{") for line in lines)  # the Trainer's own printer is replaced
    longer = json.loads((out / "train.json").read_text())
    assert longer["resumed"] and longer["steps"] == 4
    assert longer["last_logged"] is None or "lm_loss" in longer["last_logged"]
    hf_train([*argv, "--max-steps", "4"])  # the same command again: nothing to do
    assert json.loads((out / "train.json").read_text()) == longer
    hf_eval([str(out), str(text), "--eval-memory", "local,long", "--tokens-per-sample", "8",
             "--out", str(tmp_path / "eval.json"), "--cpu"])
    assert json.loads((tmp_path / "eval.json").read_text())["perplexity"] > 1


def test_bad_options_are_refused(tmp_path, capsys):
    text = tmp_path / "train.txt"
    wikitext_like(text)
    with pytest.raises(SystemExit):
        hf_train([str(text), "--out", str(tmp_path / "x"), "--memory", "local", "--local-drop-prob", "0.5"])
    assert "--memory ext only" in capsys.readouterr().err


def test_progress_lines_give_the_rate_and_time_left_from_the_steps_of_this_run(capsys):
    """A run resumed at step 100 of 400, 10 s per step: 300 s after it started it is at step 130."""
    from types import SimpleNamespace

    from trime.hf.trainer import ProgressLines

    now = [1000.0]
    progress = ProgressLines(clock=lambda: now[0])
    state = SimpleNamespace(global_step=100, max_steps=400, is_local_process_zero=True)
    progress.on_train_begin(None, state, None)
    now[0], state.global_step = 1300.0, 130
    progress.on_log(None, state, None, logs={"loss": 5.25, "lm_loss": 5.5, "epoch": 3})
    assert capsys.readouterr().out == \
        "step 130/400: loss 5.25, lm_loss 5.5, epoch 3 (10.00 s/step, 45 min 00 s left)\n"
