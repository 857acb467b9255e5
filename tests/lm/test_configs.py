"""configs/*.sh: the paper's hyperparameters parse as fairseq arguments and pass the task's checks."""

import glob
import os
import shlex
import subprocess

import pytest

pytest.importorskip("fairseq")

from fairseq import options, tasks  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402
from fairseq_utils import write_dictionary  # noqa: E402

import trime  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.sh")))


def _variables(path):
    names = ["MODEL_ARGS", "TRAIN_ARGS", "LONG_ARGS", "EVAL_ARGS", "LONG_EVAL_ARGS", "EXT_ARGS",
             "EXT_EVAL_ARGS"]
    script = f"source {shlex.quote(path)}; " + "; ".join(f'printf "%s\\0" "${name}"' for name in names)
    values = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                            check=True).stdout.split("\0")
    return {name: shlex.split(value) for name, value in zip(names, values)}


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_parses_for_training_and_evaluation(tmp_path, path):
    write_dictionary(tmp_path)
    v = _variables(path)
    assert v["MODEL_ARGS"] and v["TRAIN_ARGS"] and v["LONG_ARGS"] and v["LONG_EVAL_ARGS"]
    common = [str(tmp_path), "--user-dir", trime.USER_DIR, "--task", "trime_lm"]
    train = options.parse_args_and_arch(options.get_training_parser(), [
        *common, "--criterion", "trime_loss", *v["MODEL_ARGS"], *v["TRAIN_ARGS"], *v["LONG_ARGS"]])
    assert train.memory == "long" and train.batching == "consecutive"
    tasks.setup_task(convert_namespace_to_omegaconf(train).task)  # m divides the batch size
    evaluation = options.parse_args_and_arch(options.get_eval_lm_parser(), [
        *common, "--path", "ckpt.pt", *v["EVAL_ARGS"], *v["LONG_EVAL_ARGS"]])
    assert evaluation.eval_memory == "local,long" and evaluation.long_memory_size >= 12288


@pytest.mark.parametrize("path", [p for p in CONFIGS if "247m" in p or "7m" in p], ids=os.path.basename)
def test_external_memory_config_parses(tmp_path, path):
    write_dictionary(tmp_path)
    v = _variables(path)
    common = [str(tmp_path), "--user-dir", trime.USER_DIR, "--task", "trime_lm"]
    train = options.parse_args_and_arch(options.get_training_parser(), [
        *common, "--criterion", "trime_loss", *v["MODEL_ARGS"], *v["TRAIN_ARGS"], *v["EXT_ARGS"]])
    assert train.memory == "ext" and train.batching == "bm25" and train.local_drop_prob == 0.9
    tasks.setup_task(convert_namespace_to_omegaconf(train).task)
    evaluation = options.parse_args_and_arch(options.get_eval_lm_parser(), [
        *common, "--path", "ckpt.pt", *v["EVAL_ARGS"], *v["EXT_EVAL_ARGS"]])
    assert evaluation.eval_memory == "local,long,ext" and evaluation.knn_k == 1024
    tasks.setup_task(convert_namespace_to_omegaconf(evaluation).task)  # EvalSettings checks
