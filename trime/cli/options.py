"""`trime-user-dir` and `trime-options`: the plugin folder, and every option trime adds."""

import argparse
import dataclasses

from trime import USER_DIR


def print_user_dir():
    """`trime-user-dir`: print the path to pass to fairseq's --user-dir."""
    argparse.ArgumentParser(description="Print the folder to pass to fairseq's --user-dir.").parse_args()
    print(USER_DIR)


def option_table():
    """(flag, default, help, where) for every option trime adds to fairseq, read from the
    dataclass configs where each is declared."""
    from fairseq.tasks.language_modeling import LanguageModelingConfig
    from fairseq.tasks.translation import TranslationConfig

    from trime.glue.options import EvalOptions, choices_of, flag
    from trime.lm.criterion import TrimeLossConfig
    from trime.lm.task import TrimeLMConfig
    from trime.mt.criterion import TrimeMTLossConfig
    from trime.mt.task import TrimeTranslationConfig

    inherited = {f.name for base in (LanguageModelingConfig, TranslationConfig)
                 for f in dataclasses.fields(base)}
    evaluation = {f.name for f in dataclasses.fields(EvalOptions)}
    for config, where in ((TrimeLMConfig, "--task trime_lm"), (TrimeLossConfig, "--criterion trime_loss"),
                          (TrimeTranslationConfig, "--task trime_translation"),
                          (TrimeMTLossConfig, "--criterion trime_mt_loss")):
        for f in dataclasses.fields(config):
            if f.name in inherited or "help" not in f.metadata:
                continue
            used_by = ("fairseq-eval-lm" if f.name in evaluation and where == "--task trime_lm"
                       else "fairseq-generate" if f.name in evaluation else "fairseq-train")
            if f.name == "memory_temp" and where == "--task trime_translation":
                used_by = "fairseq-train, fairseq-generate"
            if f.name == "doc_boundary":
                used_by = "fairseq-train, fairseq-eval-lm"
            yield {"flag": flag(f.name), "default": f.default, "choices": choices_of(f),
                   "help": f.metadata["help"].replace("%%", "%"), "where": where, "used_by": used_by}


def options_markdown() -> str:
    """docs/options.md: the option reference, generated from the code."""
    lines = ["# Options", "",
             "Generated from the code by `trime-options --markdown` (a test keeps this file equal "
             "to its output). fairseq 0.12's `--help` leaves task and criterion options out; "
             "`trime-options` prints them.", "",
             "| option | with | used by | default | meaning |", "|---|---|---|---|---|"]
    for row in option_table():
        name = row["flag"] + (" {" + r" \| ".join(row["choices"]) + "}" if row["choices"] else "")
        default = "" if row["default"] is None else f"`{row['default']}`"
        lines.append(f"| `{name}` | `{row['where']}` | {row['used_by']} | {default} | "
                     f"{row['help'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def print_options(argv=None):
    """`trime-options`: list trime's fairseq options (fairseq's --help omits task/criterion options)."""
    parser = argparse.ArgumentParser(description=print_options.__doc__.split(": ", 1)[1])
    parser.add_argument("--markdown", action="store_true",
                        help="print the markdown table of docs/options.md instead")
    args = parser.parse_args(argv)
    if args.markdown:
        print(options_markdown(), end="")
        return
    for row in option_table():
        choices = f" {{{' | '.join(row['choices'])}}}" if row["choices"] else ""
        print(f"{row['flag']}{choices}  (with {row['where']}, {row['used_by']}; default: "
              f"{row['default']})\n    {row['help']}\n")
