"""Bad input gets an error that names the problem and the fix."""

import pytest

from console import USER_DIR, run
from fairseq_utils import TINY_MODEL, build, write_dictionary


@pytest.mark.parametrize("extra,message", [
    (("--memory", "ext", "--local-drop-prob", "1.5"), r"--local-drop-prob must be in \[0, 1\]"),
    (("--memory", "local", "--local-drop-prob", "0.5"), "applies to --memory ext only"),
])
def test_bad_local_drop_prob(tmp_path, extra, message):
    write_dictionary(tmp_path / "data")
    with pytest.raises(ValueError, match=message):
        build(tmp_path / "data", extra)


@pytest.mark.e2e
def test_bad_local_drop_prob_on_the_command_line(tmp_path):
    write_dictionary(tmp_path / "data")
    code, out = run("fairseq-train", tmp_path / "data", *USER_DIR, "--task", "trime_lm",
                    "--criterion", "trime_loss", "--memory", "local", "--local-drop-prob", "0.5",
                    *TINY_MODEL, "--batch-size", "2", "--cpu", check=False)
    assert code != 0 and "applies to --memory ext only" in out


def test_long_memory_with_random_batching_warns(tmp_path, caplog):
    write_dictionary(tmp_path / "data")
    with caplog.at_level("WARNING"):
        build(tmp_path / "data", ("--memory", "long"))
    assert "--memory long with --batching random" in caplog.text
    assert "--batching consecutive" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        build(tmp_path / "data", ("--memory", "long", "--batching", "consecutive",
                                  "--consecutive-segments", "2", "--batch-size", "4"))
    assert "--memory long with" not in caplog.text


@pytest.mark.parametrize("extra,message", [
    (("--consecutive-segments", "3", "--batch-size", "4"), r"\(3\) must divide --batch-size \(4\)"),
    (("--consecutive-segments", "0", "--batch-size", "4"), "must be >= 1"),
])
def test_bad_consecutive_segments(tmp_path, extra, message):
    write_dictionary(tmp_path / "data")
    with pytest.raises(ValueError, match=message):
        build(tmp_path / "data", ("--batching", "consecutive", *extra))


@pytest.mark.e2e
@pytest.mark.parametrize("option,value", [("--memory", "global"), ("--eval-memory", "everything"),
                                          ("--batching", "sorted")])
def test_unknown_option_value(tmp_path, option, value):
    write_dictionary(tmp_path / "data")
    code, out = run("fairseq-train", tmp_path / "data", *USER_DIR, "--task", "trime_lm",
                    "--criterion", "trime_loss", option, value, *TINY_MODEL, "--batch-size", "2", "--cpu",
                    check=False)
    assert code != 0 and "invalid choice" in out and value in out


def test_model_without_ffn_to_hook(tmp_path):
    write_dictionary(tmp_path / "data")
    with pytest.raises(ValueError, match="no `layers\\[-1\\].fc1` to hook.*transformer_lm"):
        build(tmp_path / "data", model=("--arch", "lstm_lm", "--decoder-layers", "1"))


def test_data_dir_without_dictionary(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no dict.txt.*fairseq-preprocess"):
        build(tmp_path / "empty")


def test_non_positive_temperature(tmp_path):
    write_dictionary(tmp_path / "data")
    with pytest.raises(ValueError, match="--memory-temp must be > 0"):
        build(tmp_path / "data", ("--memory-temp", "0"))


def test_checkpoint_activations_refused(tmp_path):
    write_dictionary(tmp_path / "data")
    with pytest.raises(ValueError, match="--checkpoint-activations"):
        build(tmp_path / "data", ("--checkpoint-activations",))


@pytest.mark.e2e
def test_trime_loss_needs_trime_task(tmp_path):
    write_dictionary(tmp_path / "data")
    code, out = run("fairseq-train", tmp_path / "data", *USER_DIR, "--task", "language_modeling",
                    "--criterion", "trime_loss", *TINY_MODEL, "--batch-size", "2", "--cpu", check=False)
    assert code != 0 and "--task trime_lm" in out
