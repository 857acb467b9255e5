"""trime-hf-train on a WikiText-like file: a word-level tokenizer trained on it, a GPT-2 from a
config trained with each memory's batches, a rerun resumes from the last checkpoint, and
trime-hf-eval scores the saved model."""

import json

import pytest
import torch

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


def test_the_word_tokenizer_keeps_every_word_and_reads_line_ends_as_eos(tmp_path):
    """40,000 distinct words (more than the 30,000 tokenizers' WordLevelTrainer keeps) all get an
    id, ids run 0..len-1 (the model's vocabulary is len(tokenizer)), and a line end is </s>."""
    import transformers

    from trime.cli.hf_train import word_tokenizer

    lines = [" ".join(f"w{i}" for i in range(j * 10_000, (j + 1) * 10_000)) + " \n" for j in range(4)]
    lines.append(" <unk> w3 </s> \n")  # the special words of the text are the special tokens
    word_tokenizer(lines, tmp_path / "words")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "words")
    vocab = tokenizer.get_vocab()
    assert len(tokenizer) == 40_002 and sorted(vocab.values()) == list(range(40_002))
    assert tokenizer("w3 <unk>\n w39999 unseen\n", add_special_tokens=False)["input_ids"] == \
        [vocab["w3"], vocab["<unk>"], vocab["</s>"], vocab["w39999"], vocab["<unk>"], vocab["</s>"]]


def test_a_wikitext_file_has_as_many_tokens_as_fairseq_gives_it(tmp_path):
    """Words plus one </s> per line, as fairseq-preprocess binarises WikiText; only the empty line
    before the first title, a document of no text, is left out."""
    from trime.cli.hf_train import word_tokenizer
    from trime.hf.data import read_segments

    text = tmp_path / "train.txt"
    lines = wikitext_like(text)
    tokenizer = word_tokenizer(text.read_text().splitlines(keepends=True), tmp_path / "words")
    segments = read_segments(str(text), tokenizer, "title", 8)
    assert lines[0] == "" and len(segments.stream) == sum(len(line.split()) + 1 for line in lines) - 1
    assert (segments.stream == tokenizer.convert_tokens_to_ids("</s>")).sum() == len(lines) - 1


def test_a_kept_model_is_fp16_weights_only_and_scores_as_the_original(tmp_path):
    """trime-keep-model on trime-hf-train's folder: no Trainer checkpoints, fp16 safetensors, and
    trime-hf-eval (which loads it in fp32) scores it as the original up to the fp16 rounding;
    scripts/keep_work.py --hf-models keeps it with a train.json that names no path of the machine."""
    import importlib.util
    import os

    from safetensors.torch import load_file

    from trime.cli.keep_model import main as keep_model

    text = tmp_path / "train.txt"
    wikitext_like(text)
    work = tmp_path / "work"
    out = work / "hf" / "none"
    hf_train([str(text), "--out", str(out), "--memory", "none", "--save-steps", "2", "--max-steps", "2", *TINY])
    kept = tmp_path / "kept"
    assert keep_model([str(out), str(kept)]) == 0
    assert not (kept / "checkpoints").exists() and (kept / "tokenizer" / "tokenizer.json").is_file()
    weights = load_file(kept / "model.safetensors")
    assert {w.dtype for w in weights.values() if w.is_floating_point()} == {torch.float16}
    original = load_file(out / "model.safetensors")
    assert weights.keys() == original.keys()

    def perplexity(model):
        target = tmp_path / f"eval-{model.name}.json"
        hf_eval([str(model), str(text), "--eval-memory", "local", "--tokens-per-sample", "8",
                 "--out", str(target), "--cpu"])
        return json.loads(target.read_text())["perplexity"]

    before, after = perplexity(out), perplexity(kept)
    assert before > 1 and abs(after - before) < 2e-3 * before
    with pytest.raises(SystemExit):  # a folder without weights is refused
        keep_model([str(out / "tokenizer"), str(tmp_path / "nothing")])
    assert not (tmp_path / "nothing").exists()

    spec = importlib.util.spec_from_file_location(
        "keep_work", os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "keep_work.py"))
    keep_work = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(keep_work)
    (work / "steps").mkdir()
    keep_work.main([str(work), str(tmp_path / "results"), "--hf-models", "none"])
    record = (tmp_path / "results" / "hf" / "none" / "train.json").read_text()
    assert str(work) not in record and "{work}/hf/none" in record
