"""fairseq-train --task trime_translation --criterion trime_mt_loss end to end on a toy parallel
corpus: it trains, logs the TRIME and vocabulary-only perplexities and validates."""

import pytest

from parallel_toy import binarised, train

pytestmark = pytest.mark.e2e  # runs fairseq's console scripts


def test_fairseq_train_with_trime_mt_loss(tmp_path):
    data = binarised(tmp_path)
    _, output = train(data, tmp_path / "ckpt", [
        "--criterion", "trime_mt_loss", "--memory-temp", "10", "--memory-topk", "8",
        "--label-smoothing", "0.1", "--ce-warmup-updates", "2"])
    assert "lm_ppl=" in output and "| valid |" in output, output[-2000:]
    assert (tmp_path / "ckpt" / "checkpoint_last.pt").exists()
