"""What every ``trime-*`` command's ``--help`` shares: one formatter, and the options of the
scripts that evaluate a checkpoint split by split (``trime-tune``, ``trime-memory-curve``), and
the fingerprint that ties their partial work (``trime.partial``) to the command."""

import argparse
import json
import os


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Description and epilog as written (their examples keep their lines); each option's help
    ends with its default, once: added as ``(default: X)`` unless the help already speaks of
    its default, or there is none to state (None, a flag's False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (action.option_strings and "default" not in text.lower() and default is not None
                and default is not False and default is not argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def add_eval_arguments(parser, gen_subset_help: str) -> None:
    """The checkpoint and split options of an evaluation, as fairseq-eval-lm names them
    (``trime.lm.harness.load_for_eval`` takes them)."""
    parser.add_argument("data", help="fairseq-preprocess output directory (--only-source)")
    parser.add_argument("--path", required=True, help="the checkpoint to evaluate")
    parser.add_argument("--gen-subset", default="valid", help=gen_subset_help)
    parser.add_argument("--tokens-per-sample", type=int, default=512, metavar="L",
                        help="tokens per scored input, context window included (as for "
                             "fairseq-eval-lm: use the training --tokens-per-sample)")
    parser.add_argument("--context-window", type=int, default=0, metavar="C",
                        help="tokens of each input that only give context (not scored); "
                             "0 = inputs do not overlap")
    parser.add_argument("--batch-size", type=int, default=None, metavar="B",
                        help="inputs per batch (default: fairseq's, by --max-tokens 36000)")
    parser.add_argument("--cpu", action="store_true",
                        help="evaluate on CPU even when a GPU is available")


def command_fingerprint(argv, checkpoint: str, **more) -> str:
    """The command a partial file belongs to: its words, what ``more`` adds, and the checkpoint's
    size and modification time (a checkpoint trained further starts the work over)."""
    stat = os.stat(checkpoint)
    return json.dumps({"argv": list(argv), **more, "checkpoint": [stat.st_size, stat.st_mtime_ns]})
