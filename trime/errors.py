"""Expected errors in one line.

trime checks its input and raises ``ValueError`` / ``FileNotFoundError`` / ``FileExistsError`` /
``FloatingPointError`` with a message that says what is wrong and the command that fixes it.
Such an error, raised by trime's own code, is *expected*: it is printed as one line, type
and message first, instead of the 20-30 lines of a traceback that end with it. Anything else
(a bug, an error from a library) keeps its full traceback, and ``TRIME_TRACEBACK=1`` shows the
traceback of expected errors too.

- fairseq's commands: ``trime_fairseq`` installs ``report_expected_errors_in_one_line`` as the
  process's ``sys.excepthook`` (chained to the previous hook) when fairseq loads the user dir;
- trime's console scripts: ``console_script`` wraps their ``main``.
"""

import functools
import os
import sys

EXPECTED_TYPES = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError)
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
TRACEBACK_VARIABLE = "TRIME_TRACEBACK"


def is_expected(error: BaseException) -> bool:
    """Raised on purpose by trime: an expected type, raised by a statement in trime's code."""
    if not isinstance(error, EXPECTED_TYPES) or os.environ.get(TRACEBACK_VARIABLE):
        return False
    frame = error.__traceback__
    if frame is None:
        return False
    while frame.tb_next is not None:
        frame = frame.tb_next
    raised_in = os.path.abspath(frame.tb_frame.f_code.co_filename)
    return raised_in.startswith(PACKAGE_DIR + os.sep)


def one_line(error: BaseException, prog: str = None) -> str:
    prog = prog or os.path.basename(sys.argv[0] or "trime")
    return f"{prog}: error: {type(error).__name__}: {error}"


def report_expected_errors_in_one_line() -> None:
    """Make the interpreter print expected errors as one line (exit status 1, as before)."""
    previous = sys.excepthook
    if getattr(previous, "trime_one_line", False):
        return

    def hook(kind, error, traceback):
        if is_expected(error):
            print(one_line(error), file=sys.stderr)
            print(f"(the traceback: {TRACEBACK_VARIABLE}=1)", file=sys.stderr)
        else:
            previous(kind, error, traceback)

    hook.trime_one_line = True
    sys.excepthook = hook


def console_script(main):
    """``main`` of a ``trime-*`` command: run from the command line (no arguments), an expected
    error ends it with one line on stderr and exit status 2, as an argparse error does; called
    from Python with arguments, it raises as usual."""

    @functools.wraps(main)
    def command(*args, **kwargs):
        if args or kwargs:
            return main(*args, **kwargs)
        from trime.quiet import silence_known_noise

        silence_known_noise()
        try:
            return main()
        except EXPECTED_TYPES as error:
            if not is_expected(error):
                raise
            print(one_line(error), file=sys.stderr)
            sys.exit(2)

    return command
