"""fairseq-train --task trime_translation --criterion trime_mt_loss end to end on a toy parallel
corpus: it trains, logs the TRIME and vocabulary-only perplexities and validates."""

import random

import pytest

from console import run

pytestmark = pytest.mark.e2e  # runs fairseq's console scripts


def _toy_parallel(folder, lines, seed):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(40)]
    with open(folder / f"{lines}.de", "w") as de, open(folder / f"{lines}.en", "w") as en:
        for _ in range(lines):
            sentence = rng.sample(words, rng.randint(3, 8))
            de.write(" ".join(sentence) + "\n")
            en.write(" ".join(w.upper() for w in reversed(sentence)) + "\n")
    return str(folder / str(lines))


def test_fairseq_train_with_trime_mt_loss(tmp_path):
    import trime

    train, valid = _toy_parallel(tmp_path, 64, 0), _toy_parallel(tmp_path, 16, 1)
    data = tmp_path / "bin"
    run("fairseq-preprocess", "--source-lang", "de", "--target-lang", "en", "--trainpref", train,
        "--validpref", valid, "--destdir", data, "--workers", "1")
    _, output = run(
        "fairseq-train", data, "--user-dir", trime.USER_DIR, "--task", "trime_translation",
        "--criterion", "trime_mt_loss", "--memory-temp", "10", "--memory-topk", "8",
        "--label-smoothing", "0.1", "--ce-warmup-updates", "2",
        "--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
        "--encoder-embed-dim", "16", "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32",
        "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2",
        "--decoder-attention-heads", "2", "--decoder-normalize-before",
        "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "256", "--max-update", "6",
        "--save-dir", tmp_path / "ckpt", "--no-epoch-checkpoints", "--log-format", "simple",
        "--log-interval", "1", "--cpu", "--num-workers", "0")
    assert "lm_ppl=" in output and "| valid |" in output, output[-2000:]
    assert (tmp_path / "ckpt" / "checkpoint_last.pt").exists()
