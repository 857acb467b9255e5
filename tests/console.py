"""Run fairseq's console scripts from the same environment as the tests."""

import os
import re
import shutil
import subprocess
import sys

import trime


def console_script(name):
    here = os.path.join(os.path.dirname(sys.executable), name)
    return here if os.path.exists(here) else shutil.which(name)


def run(name, *args, check=True, in_process=True):
    """(exit code, output) of console script ``name``; by default its entry point runs in this
    process (as trime-repro --in-process does: no interpreter and fairseq start-up per call), an
    exception counting as exit code 1; ``in_process=False`` starts the installed script."""
    if in_process:
        import tempfile
        import traceback

        from trime.repro.runner import run_in_process

        with tempfile.TemporaryDirectory() as tmp:
            log = os.path.join(tmp, "output.log")
            try:
                returncode = run_in_process([name, *map(str, args)], log)
                crash = ""
            except Exception:  # a subprocess would print the traceback and exit with 1
                returncode, crash = 1, traceback.format_exc()
            with open(log) as f:
                output = f.read() + crash
    else:
        proc = subprocess.run([console_script(name), *map(str, args)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        returncode, output = proc.returncode, proc.stdout + proc.stderr
    if check and returncode != 0:
        raise AssertionError(f"{name} failed ({returncode}):\n{output[-4000:]}")
    return returncode, output


def preprocess(raw_dir, dest):
    """fairseq-preprocess --only-source on raw_dir/{train,valid,test}.txt, in this process
    (fairseq's own preprocess main, without a second interpreter start)."""
    import logging

    from fairseq import options
    from fairseq_cli.preprocess import main

    args = options.get_preprocessing_parser().parse_args([
        "--only-source", "--trainpref", f"{raw_dir}/train.txt", "--validpref", f"{raw_dir}/valid.txt",
        "--testpref", f"{raw_dir}/test.txt", "--destdir", str(dest), "--workers", "1"])
    logger = logging.getLogger("fairseq_cli.preprocess")
    handlers = list(logger.handlers)
    try:
        main(args)
    finally:  # main adds a file handler for DEST/preprocess.log on every call
        for handler in set(logger.handlers) - set(handlers):
            logger.removeHandler(handler)
            handler.close()


def last_float(pattern, text):
    values = re.findall(pattern, text)
    assert values, f"no match for {pattern!r} in:\n{text[-3000:]}"
    return float(values[-1])


USER_DIR = ["--user-dir", trime.USER_DIR]
