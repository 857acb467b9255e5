"""fairseq-preprocess -> fairseq-train (trime) -> fairseq-eval-lm, on CPU.

Checks that fairseq-eval-lm --eval-memory local (τ = 1, no context window)
reports the same validation loss as the criterion for the same segments.
"""

import math

import pytest
import torch

pytest.importorskip("fairseq")

from console import USER_DIR, last_float, preprocess, run  # noqa: E402
from trime.cli.toy_corpus import write_splits  # noqa: E402

pytestmark = pytest.mark.e2e  # fairseq console scripts end to end

L = 64
MODEL = ["--arch", "transformer_lm", "--decoder-layers", "2", "--decoder-embed-dim", "32",
         "--decoder-ffn-embed-dim", "64", "--decoder-attention-heads", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    write_splits(root / "raw", train_stories=60, valid_stories=6, test_stories=6)
    preprocess(root / "raw", root / "bin")
    _, log = run("fairseq-train", root / "bin", *USER_DIR, "--task", "trime_lm",
                 "--criterion", "trime_loss", *MODEL, "--tokens-per-sample", L,
                 "--batch-size", 8, "--max-update", 6, "--ce-warmup-updates", 2,
                 "--optimizer", "adam", "--lr", "1e-3", "--save-dir", root / "ckpt",
                 "--no-epoch-checkpoints", "--cpu", "--num-workers", 0, "--seed", 3,
                 in_process=False)  # the installed console script, once; the other tests run in-process
    return root, log


def _criterion_valid_loss(root):
    """The criterion's summed validation loss, recomputed in full precision (base 2)."""
    from fairseq import checkpoint_utils, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [str(root / "bin"), *USER_DIR, "--task", "trime_lm", "--criterion", "trime_loss",
            *MODEL, "--tokens-per-sample", str(L)]
    cfg = convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(root / "ckpt" / "checkpoint_last.pt")], task=task)
    model, criterion = models[0].eval(), task.build_criterion(cfg.criterion)
    task.load_dataset("valid")
    batches = task.get_batch_iterator(task.dataset("valid"), max_sentences=8).next_epoch_itr(
        shuffle=False)
    total, ntokens = 0.0, 0
    with torch.no_grad():
        for sample in batches:
            loss, sample_size, _ = criterion(model, sample)
            total, ntokens = total + loss.item(), ntokens + sample_size
    return total / ntokens / math.log(2), ntokens


def _eval_lm(root, *extra):
    _, out = run("fairseq-eval-lm", root / "bin", *USER_DIR, "--task", "trime_lm",
                 "--path", root / "ckpt" / "checkpoint_last.pt", "--gen-subset", "valid",
                 "--tokens-per-sample", L, "--batch-size", 8, "--cpu", *extra)
    return last_float(r"Loss \(base 2\): ([0-9.]+)", out), out


def test_eval_lm_local_equals_criterion_valid_loss(trained):
    root, train_log = trained
    train_valid = last_float(r"valid on 'valid' subset \| loss ([0-9.]+)", train_log)
    exact, ntokens = _criterion_valid_loss(root)
    eval_loss, out = _eval_lm(root, "--eval-memory", "local", "--memory-temp", "1")
    assert f"Evaluated {ntokens:,} tokens" in out
    assert abs(eval_loss - exact) < 1e-4  # eval-lm prints 4 decimals
    assert abs(train_valid - exact) < 1e-3  # the training log prints 3


def test_eval_lm_none_is_the_plain_lm_and_memory_helps(trained):
    root, train_log = trained
    lm_valid = last_float(r"valid on 'valid' subset \|.*? lm_loss ([0-9.]+)", train_log)
    plain, _ = _eval_lm(root, "--eval-memory", "none")
    local, _ = _eval_lm(root, "--eval-memory", "local")
    assert abs(plain - lm_valid) < 1e-3
    assert local < plain


def test_eval_lm_context_window_is_finite(trained):
    root, _ = trained
    loss, out = _eval_lm(root, "--eval-memory", "local", "--context-window", 32,
                         "--memory-temp", "1.2")
    assert math.isfinite(loss) and "skipping tokens with inf scores" not in out


def test_kept_model_is_fp16_weights_only_and_scores_as_the_original(trained, tmp_path):
    """trime-keep-model: no optimizer state, fp16 weights; fairseq-eval-lm scores it as the
    original up to the fp16 rounding of the weights."""
    from trime.cli.keep_model import main as keep_model

    root, _ = trained
    original = root / "ckpt" / "checkpoint_last.pt"
    kept = tmp_path / "kept" / "checkpoint_last.pt"
    assert keep_model([str(original), str(kept)]) == 0
    state = torch.load(kept, map_location="cpu", weights_only=False)
    assert "last_optimizer_state" not in state
    assert {w.dtype for w in state["model"].values() if w.is_floating_point()} == {torch.float16}
    assert kept.stat().st_size < 0.6 * original.stat().st_size
    before, _ = _eval_lm(root, "--eval-memory", "local")
    _, out = run("fairseq-eval-lm", root / "bin", *USER_DIR, "--task", "trime_lm", "--path", kept,
                 "--gen-subset", "valid", "--tokens-per-sample", L, "--batch-size", 8, "--cpu",
                 "--eval-memory", "local")
    after = last_float(r"Loss \(base 2\): ([0-9.]+)", out)
    assert before > 0 and abs(after - before) < 2e-3 * before
    with pytest.raises(SystemExit):  # never over the original
        keep_model([str(original), str(original)])
