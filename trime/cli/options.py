"""`trime-user-dir` and `trime-options`: the plugin folder, and every option trime adds."""

import argparse
import dataclasses

from trime import USER_DIR
from trime.cli.parsing import HelpFormatter
from trime.errors import console_script


@console_script
def print_user_dir():
    """`trime-user-dir`: print the path to pass to fairseq's --user-dir."""
    argparse.ArgumentParser(prog="trime-user-dir", description="Print the folder to pass to "
                            "fairseq's --user-dir, e.g. fairseq-train DATA --user-dir "
                            "\"$(trime-user-dir)\" --task trime_lm ...").parse_args()
    print(USER_DIR)


def option_table():
    """(flag, default, help, where) for every option trime adds to fairseq, read from the
    dataclass configs where each is declared."""
    from fairseq.tasks.language_modeling import LanguageModelingConfig
    from fairseq.tasks.translation import TranslationConfig

    from trime.settings import EvalOptions, choices_of, flag
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


# where an option applies: (title, the family of its config, the command that reads it)
SECTIONS = (
    ("Language model training", "lm", "fairseq-train",
     "fairseq-train DATA --user-dir \"$(trime-user-dir)\" --task trime_lm --criterion trime_loss"),
    ("Language model evaluation", "lm", "fairseq-eval-lm",
     "fairseq-eval-lm DATA --user-dir \"$(trime-user-dir)\" --task trime_lm --path CKPT "
     "(also trime-tune and trime-memory-curve, after their --)"),
    ("Translation training", "mt", "fairseq-train",
     "fairseq-train DATA --user-dir \"$(trime-user-dir)\" --task trime_translation "
     "--criterion trime_mt_loss"),
    ("Translation decoding", "mt", "fairseq-generate",
     "fairseq-generate / fairseq-interactive DATA --user-dir \"$(trime-user-dir)\" --task "
     "trime_translation --path CKPT (also trime-mt-tune, after its --)"),
)
FAMILY = {"--task trime_lm": "lm", "--criterion trime_loss": "lm",
          "--task trime_translation": "mt", "--criterion trime_mt_loss": "mt"}


def sections():
    """[(title, command, [rows])] in SECTIONS' order; a row also says where the same flag has
    another default (``differs``: the language-model / translation counterpart)."""
    rows = list(option_table())
    by_family = {}
    for row in rows:
        by_family.setdefault((FAMILY[row["where"]], row["flag"]), []).append(row)
    out = []
    for title, family, command, usage in SECTIONS:
        chosen = []
        for row in rows:
            if FAMILY[row["where"]] != family or command not in row["used_by"]:
                continue
            other = "mt" if family == "lm" else "lm"
            twins = [r for r in by_family.get((other, row["flag"]), []) if r["default"] != row["default"]]
            differs = "; ".join(f"with {r['where']}: default {r['default']}" for r in twins)
            chosen.append(dict(row, differs=differs))
        out.append((title, usage, chosen))
    return out


def options_markdown() -> str:
    """docs/options.md: the option reference, generated from the code."""
    lines = ["# Options", "",
             "Generated from the code by `trime-options --markdown` (a test keeps this file equal "
             "to its output). fairseq 0.12's `--help` leaves task and criterion options out; "
             "`trime-options` prints them, grouped by the command that reads them. An option "
             "that the language-model and translation tasks both have, with other defaults, says "
             "so in its row.", ""]
    lines += [f"- [{title}](#{title.lower().replace(' ', '-')})" for title, _, _ in sections()]
    for title, usage, rows in sections():
        lines += ["", f"## {title}", "", f"`{usage}`", "",
                  "| option | with | default | meaning |", "|---|---|---|---|"]
        for row in rows:
            name = row["flag"] + (" {" + r" \| ".join(row["choices"]) + "}" if row["choices"] else "")
            default = "" if row["default"] is None else f"`{row['default']}`"
            meaning = row["help"].replace("|", "/") + (f" (**{row['differs']}**)" if row["differs"] else "")
            lines.append(f"| `{name}` | `{row['where']}` | {default} | {meaning} |")
    return "\n".join(lines) + "\n"


@console_script
def print_options(argv=None):
    """`trime-options`: list trime's fairseq options (fairseq's --help omits task/criterion options)."""
    parser = argparse.ArgumentParser(prog="trime-options", description=print_options.__doc__.split(": ", 1)[1]
                                     + ", grouped by the command that reads them.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--markdown", action="store_true",
                        help="print the markdown tables of docs/options.md instead")
    args = parser.parse_args(argv)
    if args.markdown:
        print(options_markdown(), end="")
        return
    for title, usage, rows in sections():
        print(f"== {title}: {usage}\n")
        for row in rows:
            choices = f" {{{' | '.join(row['choices'])}}}" if row["choices"] else ""
            differs = f"; {row['differs']}" if row["differs"] else ""
            print(f"{row['flag']}{choices}  (with {row['where']}; default: {row['default']}{differs})"
                  f"\n    {row['help']}\n")
