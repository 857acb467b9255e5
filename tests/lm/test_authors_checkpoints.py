"""The TRIME authors' fairseq-0.9 checkpoints load and evaluate in trime (trime.lm.authors).

Checkpoints are written in the fork's exact layout (tests/authors_format.py) at tiny sizes, from
what the fork's own parser and model produce (tests/data/authors_layout.json): the loaded model
must give the fork's log-probabilities, and every evaluation memory must run.
"""

import argparse
import math

import pytest
import torch

pytest.importorskip("fairseq")

from authors_format import (LAYOUT, RUNS, authors_args, authors_data, model_of,  # noqa: E402
                            write_checkpoint)
from console import USER_DIR, last_float, run  # noqa: E402
from naive import adaptive_vocab_scores, eq6_distribution  # noqa: E402

ARCH_FIELDS = ("decoder_layers", "decoder_embed_dim", "decoder_ffn_embed_dim",
               "decoder_attention_heads", "decoder_input_dim", "decoder_output_dim", "dropout",
               "attention_dropout", "activation_dropout", "no_decoder_final_norm",
               "decoder_normalize_before")
ONE_PER_ARCH = {LAYOUT["runs"][r]["arch"]: r for r in RUNS}


def _load(data, checkpoint, extra=()):
    """fairseq-eval-lm's model loading: --task trime_lm from the command line, the model from
    the checkpoint."""
    from fairseq import checkpoint_utils, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_eval_lm_parser()
    args = options.parse_args_and_arch(parser, [str(data), *USER_DIR, "--task", "trime_lm",
                                                "--path", str(checkpoint), *extra])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)], task=task)
    return task, models[0].eval()


@pytest.mark.parametrize("arch", sorted(ONE_PER_ARCH))
def test_registered_architectures_have_the_forks_defaults(arch):
    """What the fork's parser set for a train script, where the script does not set it, is what
    trime's registration of the architecture sets on an empty Namespace."""
    import trime_fairseq  # noqa: F401
    from fairseq.models import ARCH_CONFIG_REGISTRY

    theirs = LAYOUT["runs"][ONE_PER_ARCH[arch]]
    ours = argparse.Namespace()
    ARCH_CONFIG_REGISTRY[arch](ours)
    assert {f: getattr(ours, f) for f in ARCH_FIELDS} == {f: theirs[f] for f in ARCH_FIELDS}


@pytest.mark.parametrize("arch", sorted(ONE_PER_ARCH))
def test_a_checkpoint_of_the_fork_is_the_forks_function(tmp_path, arch):
    """Loaded from the fork's layout, the model gives the fork's own log-probabilities (recorded
    by running the fork's model on the same weights), and local memory is the naive Eq. 6."""
    from trime.settings import EvalSettings

    run_name = ONE_PER_ARCH[arch]
    data, dictionary = authors_data(tmp_path, run_name)
    checkpoint = write_checkpoint(tmp_path / "checkpoint_best.pt", run_name)
    with pytest.raises(RuntimeError, match="CUDA"):  # tagged cuda:0, as a GPU-trained model
        torch.load(checkpoint, weights_only=False)
    task, model = _load(data, checkpoint)
    recorded = model_of(run_name)
    tokens = torch.tensor([recorded["tokens"]])
    source, target = tokens[:, :-1], tokens[:, 1:]
    sample = {"net_input": {"src_tokens": source, "src_lengths": torch.tensor([source.size(1)])},
              "target": target}
    with torch.no_grad():
        out = model(**sample["net_input"])
        log_probs = model.get_normalized_probs(out, log_probs=True, sample=sample)
    ours = log_probs.gather(-1, target[..., None])[0, :, 0].double()
    assert torch.allclose(ours, torch.tensor(recorded["target_log_probs"], dtype=torch.float64),
                          atol=2e-5), (ours, recorded["target_log_probs"])

    # local memory (Eq. 6, τ = 1.2) over the same outputs, word by word
    model.start_evaluation("test", settings=EvalSettings(eval_memory="local", memory_temp=1.2))
    with torch.no_grad():
        out = model(**sample["net_input"])
        with_memory = model.get_normalized_probs(out, log_probs=True, sample=sample)
        vocab_scores = adaptive_vocab_scores(model.decoder.adaptive_softmax, out[0])[0]
    g, labels = out[1]["trime_query"][0], target[0]
    for t in range(target.size(1)):
        p = eq6_distribution(vocab_scores[t], g[t], g, labels, list(range(t)), 1.2)
        assert abs(float(with_memory[0, t, labels[t]]) - math.log(p[labels[t]])) < 2e-5


def test_the_forks_unreleased_architectures_and_training_criteria_say_what_to_do(tmp_path):
    data, _ = authors_data(tmp_path, "wiki103-150M-trime")
    args = authors_args("wiki103-150M-trime")
    args.arch = "transformer_lm_wiki103_small"
    checkpoint = write_checkpoint(tmp_path / "small.pt", "wiki103-150M-trime", args)
    code, out = run("fairseq-eval-lm", data, *USER_DIR, "--task", "trime_lm", "--path", checkpoint,
                    check=False)
    assert code != 0 and "--arch transformer_lm_wiki103_small is an architecture of the TRIME " \
                         "authors' fork that trime does not register" in out
    # their datastore command's "--tokens-per-sample 512 --context-window 2560" is 0.9's meaning
    released = write_checkpoint(tmp_path / "released.pt", "wiki103-150M-trime")
    code, out = run("fairseq-eval-lm", data, *USER_DIR, "--task", "trime_lm", "--path", released,
                    "--tokens-per-sample", 5, "--context-window", 8, check=False)
    assert code != 0 and "--tokens-per-sample must exceed --context-window" in out
    code, out = run("fairseq-train", data, *USER_DIR, "--task", "trime_lm", "--arch",
                    "transformer_lm_enwik8", "--criterion", "trime_long_loss_same_device",
                    "--optimizer", "adam", "--max-update", 1, "--batch-size", 2, "--cpu", "--save-dir", tmp_path / "s",
                    check=False)
    assert code != 0 and "trime trains the same objective with --criterion trime_loss --memory " \
                         "long --batching consecutive" in out


@pytest.mark.e2e
@pytest.mark.parametrize("run_name", RUNS)
def test_fairseq_eval_lm_scores_every_released_run_with_every_memory(tmp_path, run_name):
    """fairseq-eval-lm --task trime_lm --path <the fork's checkpoint> with none (the fork's own
    numbers), local, local,long and, for the external-memory run, ext."""
    data, _ = authors_data(tmp_path, run_name)
    checkpoint = write_checkpoint(tmp_path / "checkpoint_best.pt", run_name)
    recorded = model_of(run_name)["target_log_probs"]
    length = len(recorded)  # the test split is the recorded line: one segment
    common = [data, *USER_DIR, "--task", "trime_lm", "--path", checkpoint, "--gen-subset", "test",
              "--tokens-per-sample", length, "--cpu", "--num-workers", 0]
    _, out = run("fairseq-eval-lm", *common, "--eval-memory", "none")
    assert last_float(r"Loss \(base 2\): ([\d.]+)", out) == pytest.approx(
        -sum(recorded) / len(recorded) / math.log(2), abs=1e-4)
    for memory in (["--eval-memory", "local", "--memory-temp", "1.1"],
                   ["--eval-memory", "local,long", "--long-memory-size", 64]):
        _, out = run("fairseq-eval-lm", *common, *memory)
        assert math.isfinite(last_float(r"Perplexity: ([\d.]+)", out))
    if LAYOUT["runs"][run_name]["criterion"] == "trime_ext_loss":
        # docs/authors-checkpoints.md's commands: a datastore saved with a context window,
        # complete-sentence segments scored one at a time with it
        window = ["--tokens-per-sample", 40, "--context-window", 30, "--cpu", "--num-workers", 0]
        run("fairseq-eval-lm", data, *USER_DIR, "--task", "trime_lm", "--path", checkpoint,
            "--gen-subset", "train", *window, "--save-dstore", tmp_path / "dstore")
        run("trime-build-index", tmp_path / "dstore", "--metric", "ip", "--index-type", "flat")
        _, out = run("fairseq-eval-lm", data, *USER_DIR, "--task", "trime_lm", "--path", checkpoint,
                     "--gen-subset", "test", "--batch-size", 1, "--sample-break-mode", "complete",
                     *window, "--eval-memory", "local,long,ext", "--long-memory-size", 64,
                     "--memory-temp", 1.25, "--dstore", tmp_path / "dstore", "--knn-k", 8,
                     "--knn-nprobe", 32, "--knn-lambda", 0.3, "--knn-temp", 0.33)
        assert math.isfinite(last_float(r"Perplexity: ([\d.]+)", out))
