"""Small console scripts."""

import argparse
import dataclasses

from trime import USER_DIR


def print_user_dir():
    """`trime-user-dir`: print the path to pass to fairseq's --user-dir."""
    argparse.ArgumentParser(description="Print the folder to pass to fairseq's --user-dir.").parse_args()
    print(USER_DIR)


def trime_options():
    """(flag, default, help, where) for every option trime adds to fairseq."""
    from fairseq.tasks.language_modeling import LanguageModelingConfig

    from trime.criterion import TrimeLossConfig
    from trime.task import TrimeLMConfig

    inherited = {f.name for f in dataclasses.fields(LanguageModelingConfig)}
    for config, where in ((TrimeLMConfig, "--task trime_lm"), (TrimeLossConfig, "--criterion trime_loss")):
        for f in dataclasses.fields(config):
            if f.name in inherited or "help" not in f.metadata:
                continue
            yield "--" + f.name.replace("_", "-"), f.default, f.metadata["help"], where


def print_options():
    """`trime-options`: list trime's fairseq options (fairseq's --help omits task/criterion options)."""
    argparse.ArgumentParser(description=print_options.__doc__.split(": ", 1)[1]).parse_args()
    for flag, default, help_text, where in trime_options():
        print(f"{flag}  (with {where}; default: {default})\n    {help_text.replace('%%', '%')}\n")
