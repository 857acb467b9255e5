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


def run(name, *args, check=True):
    proc = subprocess.run([console_script(name), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    output = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{output[-4000:]}")
    return proc.returncode, output


def preprocess(raw_dir, dest):
    run("fairseq-preprocess", "--only-source", "--trainpref", f"{raw_dir}/train.txt",
        "--validpref", f"{raw_dir}/valid.txt", "--testpref", f"{raw_dir}/test.txt",
        "--destdir", dest, "--workers", "1")


def last_float(pattern, text):
    values = re.findall(pattern, text)
    assert values, f"no match for {pattern!r} in:\n{text[-3000:]}"
    return float(values[-1])


USER_DIR = ["--user-dir", trime.USER_DIR]
