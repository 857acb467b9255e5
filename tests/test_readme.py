"""The README's test command is exactly what .ci/run runs; its user-dir hint works."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def test_ci_runs_the_readme_test_command():
    ci_command = [line for line in _read(".ci/run").splitlines() if "pytest" in line]
    assert len(ci_command) == 1
    assert ci_command[0] in _read("README.md")


def test_trime_user_dir_prints_the_package_folder():
    out = subprocess.run([sys.executable, "-c", "from trime.cli import print_user_dir; print_user_dir()"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert os.path.isfile(os.path.join(out, "__init__.py")) and os.path.basename(out) == "trime"


def test_readme_documents_every_option():
    from trime.cli import trime_options

    readme = _read("README.md")
    flags = [flag for flag, *_ in trime_options()]
    assert "--memory-temp" in flags and "--ce-warmup-updates" in flags
    for flag in flags:
        assert f"`{flag}" in readme, f"{flag} is not in the README's options table"
