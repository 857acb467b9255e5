"""Every option is declared once: the command line's defaults are the settings' defaults."""

import argparse
import dataclasses

import pytest

from trime.settings import EvalOptions, EvalSettings, add_argparse_options, flag, option_names

fairseq = pytest.importorskip("fairseq")


def _eval_lm_config(tmp_path, *extra):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from fairseq_utils import write_dictionary
    import trime

    write_dictionary(tmp_path)
    argv = [str(tmp_path), "--user-dir", trime.USER_DIR, "--task", "trime_lm", "--path", "x.pt",
            *extra]
    args = options.parse_args_and_arch(options.get_eval_lm_parser(), argv)
    return args, convert_namespace_to_omegaconf(args).task


def test_command_line_defaults_equal_the_settings_defaults(tmp_path):
    args, task_cfg = _eval_lm_config(tmp_path)
    defaults = EvalSettings()
    assert len(option_names()) == 18
    for name in option_names():
        assert str(getattr(args, name)) == str(getattr(defaults, name)), name
        assert str(getattr(task_cfg, name)) == str(getattr(defaults, name)), name
    assert EvalSettings.from_options(task_cfg) == defaults
    assert EvalSettings.from_options(args) == defaults


def test_settings_are_built_by_field_name(tmp_path):
    _, task_cfg = _eval_lm_config(tmp_path, "--eval-memory", "local,long", "--long-memory-size",
                                  "77", "--cache-theta", "0.7", "--long-memory-reset", "never",
                                  "--memory-temp", "1.5")
    settings = EvalSettings.from_options(task_cfg)
    assert (settings.eval_memory, settings.long_memory_size, settings.cache_theta,
            settings.reset_at_documents, settings.memory_temp) == ("local,long", 77, 0.7, False, 1.5)
    assert isinstance(settings.eval_memory, str) and isinstance(settings.long_memory_reset, str)


def test_argparse_options_reuse_the_declaration():
    parser = argparse.ArgumentParser()
    names = ("memory_temp", "long_memory_reset", "cache_lambda", "knn_exact_scores", "knn_sim")
    add_argparse_options(parser, EvalOptions, names)
    parsed = parser.parse_args([])
    for f in dataclasses.fields(EvalOptions):
        if f.name in names:
            assert getattr(parsed, f.name) == f.default
    assert parser.parse_args(["--long-memory-reset", "never"]).long_memory_reset == "never"
    assert parser.parse_args(["--knn-sim", "l2"]).knn_sim == "l2"
    with pytest.raises(SystemExit):
        parser.parse_args(["--long-memory-reset", "sometimes"])
    assert flag("long_memory_size") == "--long-memory-size"


def test_a_config_copying_declarations_changes_only_the_defaults_it_names():
    from trime.settings import declared_fields
    from trime.settings import choices_of
    from trime.mt.task import MT_MEMORY_OPTIONS, MT_NARROWED, MTMemoryOptions

    lm = {f.name: f for f in dataclasses.fields(EvalOptions)}
    mt = {f.name: f for f in dataclasses.fields(MTMemoryOptions)}
    assert set(mt) >= set(MT_MEMORY_OPTIONS)
    assert set(MT_NARROWED) == {"eval_memory", "eval_scoring"}
    for name in MT_MEMORY_OPTIONS:  # the same help, choices and type; K is translation's own
        assert mt[name].default == (16 if name == "knn_k" else lm[name].default), name
        if name in MT_NARROWED:  # fewer choices, and a help that says what they mean there
            assert set(choices_of(mt[name])) < set(choices_of(lm[name])), name
            assert mt[name].metadata["help"] == MT_NARROWED[name][1] != lm[name].metadata["help"]
            continue
        assert mt[name].metadata == lm[name].metadata and mt[name].type == lm[name].type, name
    assert lm["knn_k"].default == 1024
    with pytest.raises(ValueError, match="undeclared fields: \\['knn_lambda'\\]"):
        declared_fields(EvalOptions, ["knn_k"], {"knn_lambda": 0.5})
