"""A researcher's first hour: quiet, fast commands; expected errors in one line; progress on
long evaluations; complete --help for every trime-* command."""

import argparse
import contextlib
import io
import logging
import os
import re
import subprocess
import sys
import warnings
from importlib.metadata import entry_points

import pytest

import trime

SCRIPTS = sorted(e.name for e in entry_points(group="console_scripts") if e.name.startswith("trime-"))


def _script(name):
    here = os.path.join(os.path.dirname(sys.executable), name)
    return here if os.path.exists(here) else name


def test_every_console_script_is_listed():
    assert {"trime-user-dir", "trime-tune", "trime-build-index", "trime-toy-corpus"} <= set(SCRIPTS)


def test_trime_user_dir_prints_only_the_folder_fairseq_imports_fast():
    proc = subprocess.run([_script("trime-user-dir")], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == ""
    folder = proc.stdout.strip()
    assert proc.stdout == folder + "\n" and folder == trime.USER_DIR
    assert os.path.isfile(os.path.join(folder, "__init__.py"))
    # no fairseq (nor torch) on the way: that is what made it cost seconds
    code = ("import sys; from trime.cli.options import print_user_dir; sys.argv = ['trime-user-dir'];"
            " print_user_dir(); print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'fairseq', 'torch', 'numpy'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.splitlines()[-1] == "[]", proc.stdout + proc.stderr


def test_importing_trime_registers_nothing_the_user_dir_registers_everything():
    code = """
import sys
import trime, trime.core, trime.extmem, trime.hf, trime.hf.architectures, trime.errors, trime.quiet, trime.progress
assert not [m for m in sys.modules if m.startswith(("fairseq", "trime.lm", "trime.mt"))], "side effect"
from fairseq import utils
from fairseq.criterions import CRITERION_REGISTRY
from fairseq.tasks import TASK_REGISTRY
assert "trime_lm" not in TASK_REGISTRY
utils.import_user_module(type("Args", (), {"user_dir": trime.USER_DIR})())
assert {"trime_lm", "trime_translation"} <= set(TASK_REGISTRY), sorted(TASK_REGISTRY)
assert {"trime_loss", "trime_mt_loss"} <= set(CRITERION_REGISTRY)
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_known_noise_is_silenced_and_other_warnings_still_show():
    from trime.quiet import KNOWN_WARNINGS, silence_known_noise, timestamped_log_lines

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_noise()
        warnings.warn("hydra.experimental.initialize() is no longer experimental. Use "
                      "hydra.initialize()", UserWarning)
        warnings.warn("\nThe version_base parameter is not specified.\nPlease specify", UserWarning)
        warnings.warn("'pin_memory' argument is set as true but no accelerator is found, then "
                      "device pinned memory won't be used.", UserWarning)
        warnings.warn("`torch.cuda.amp.autocast(args...)` is deprecated. Please use "
                      "`torch.amp.autocast('cuda', args...)` instead.", FutureWarning)
        warnings.warn("a real warning of the user's run", UserWarning)
        warnings.warn("`torch.cuda.amp.autocast(args...)` is deprecated", UserWarning)  # other category
    assert [str(w.message) for w in caught] == ["a real warning of the user's run",
                                                "`torch.cuda.amp.autocast(args...)` is deprecated"]
    assert len(KNOWN_WARNINGS) >= 5
    assert logging.getLogger("faiss.loader").getEffectiveLevel() == logging.WARNING
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        timestamped_log_lines()
        assert handler.formatter._fmt.startswith("%(asctime)s | %(levelname)s")
    finally:
        root.removeHandler(handler)


def test_pytest_filters_only_named_warnings():
    with open(os.path.join(os.path.dirname(__file__), "..", "pytest.ini")) as f:
        ini = f.read()
    assert "ignore::DeprecationWarning\n" not in ini and "ignore::UserWarning\n" not in ini


def _raise_in_trime():
    from trime.settings import EvalSettings

    EvalSettings(eval_memory="local,ext")  # no --dstore: trime's own check


def test_expected_errors_are_trimes_own_checks():
    from trime.errors import is_expected

    with pytest.raises(ValueError) as ours:
        _raise_in_trime()
    assert is_expected(ours.value)
    with pytest.raises(ValueError) as library:
        int("x")  # raised outside trime: a bug or a library's error keeps its traceback
    assert not is_expected(library.value)
    assert not is_expected(KeyError("k"))


def test_console_script_ends_an_expected_error_with_one_line(tmp_path):
    proc = subprocess.run([_script("trime-build-index"), str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("trime-build-index: error: ValueError: ")
    assert "is not a trime datastore" in lines[0] and "--save-dstore DIR" in lines[0]
    assert "trime-mt-datastore" in lines[0]


def test_console_script_called_from_python_raises():
    from trime.cli.build_index import main

    with pytest.raises(ValueError, match="not a trime datastore"):
        main([os.path.dirname(__file__)])


def test_fairseq_command_reports_a_trime_error_in_one_line(tmp_path):
    """The hook the user dir installs: type and message first, the fix inside, no traceback."""
    from trime.errors import report_expected_errors_in_one_line

    code = (f"import sys; sys.argv = ['fairseq-eval-lm']; sys.path.insert(0, {os.path.dirname(__file__)!r});"
            "from trime.errors import report_expected_errors_in_one_line as r; r();"
            "from test_first_hour import _raise_in_trime; _raise_in_trime()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("fairseq-eval-lm: error: ValueError: --eval-memory local,ext needs --dstore")
    assert "--save-dstore DIR" in first and "trime-build-index DIR" in first
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TRIME_TRACEBACK": "1"})
    assert "Traceback" in proc.stderr  # asked for: the whole traceback
    assert callable(report_expected_errors_in_one_line)


def test_evaluation_progress_lines():
    from trime.progress import logged_progress

    ticks = iter(range(0, 1000, 20))  # 20 s between batches
    records = []

    class Catch(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("test.progress")
    logger.addHandler(Catch())
    logger.setLevel(logging.INFO)
    out = list(logged_progress(range(5), 5, "scoring valid", logger, size=lambda i: 100,
                               every=30, clock=lambda: next(ticks)))
    assert out == list(range(5))
    assert records[0] == ("TRIME: scoring valid: 2 / 5 batches (40%), 200 tokens, 5 tokens/s, "
                          "1 min 00 s left")
    assert records[-1] == "TRIME: scoring valid: 5 batches, 500 tokens in 2 min 00 s (4 tokens/s)"


def test_trime_tune_scores_an_extreme_grid_point_as_infinite_perplexity():
    """A grid point far off (here τ = 0.001 on a model's log-probabilities) lies beyond float
    range as a perplexity: inf in the table, its loss kept, no OverflowError."""
    import math
    from types import SimpleNamespace

    import torch

    from trime.lm.tuning import grid, perplexity

    assert perplexity(math.log(250.0)) == pytest.approx(250.0)
    assert perplexity(709.0) == pytest.approx(math.exp(709.0)) and perplexity(710.0) == math.inf

    class Stats:  # -log p = 0.8 / τ nats per token
        def target_log_prob(self, scoring, tau, *rest, **kwargs):
            return torch.full((3,), -0.8 / tau, dtype=torch.float64)

    settings = SimpleNamespace(uses_ext=False, uses_cache=False, knn_interp_memory="eval")
    rows = grid(Stats(), "trime", settings, taus=[1.0, 0.001], interp_temps=[1], lambdas=[0])
    assert rows[0]["perplexity"] == pytest.approx(math.exp(0.8))
    assert rows[1]["perplexity"] == math.inf and rows[1]["loss"] == pytest.approx(800 / math.log(2))


def _parser_of(name):
    """The argparse parser a console script builds (stopped at its parse_args)."""
    entry = next(e for e in entry_points(group="console_scripts") if e.name == name)

    class Parsed(Exception):
        pass

    def capture(parser, *args, **kwargs):
        raise Parsed(parser)

    main = entry.load()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", capture)
        patch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
        patch.setattr(sys, "argv", [name])
        with pytest.raises(Parsed) as parsed:
            main() if name == "trime-user-dir" else main(["--help"])
    return parsed.value.args[0]


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_option_has_help_and_its_default_once(name):
    parser = _parser_of(name)
    assert parser.prog == name and parser.description
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        label = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{name} {label}: no help text"
        text = formatter._expand_help(action)
        assert "(default: None)" not in text, f"{name} {label}: {text}"
        assert len(re.findall(r"default", text, re.IGNORECASE)) <= 1, f"{name} {label}: {text}"
        if action.option_strings and action.default not in (None, False):
            assert "default" in text.lower(), f"{name} {label}: its default is not shown: {text}"
    # examples keep their lines: a lost backslash-newline joins two lines with a run of spaces
    for text in (parser.description or "", parser.epilog or ""):
        for line in text.splitlines():
            assert not re.search(r"\S {5,}-", line), f"{name}: joined lines in an example: {line!r}"


def test_trime_options_groups_by_command_and_names_differing_defaults():
    from trime.cli.options import print_options

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_options([])
    text = out.getvalue()
    titles = re.findall(r"^== (.+?):", text, re.MULTILINE)
    assert titles == ["Language model training", "Language model evaluation", "Translation training",
                      "Translation decoding"]
    lm_eval = text.split("== Language model evaluation")[1].split("== Translation training")[0]
    assert "--knn-k  (with --task trime_lm; default: 1024; with --task trime_translation: default 16)" \
        in lm_eval
    assert "--ce-warmup-updates" not in lm_eval and "--eval-memory" in lm_eval
