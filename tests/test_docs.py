"""The README and docs/ stay a user's documentation, true to the code."""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + [os.path.join("docs", name) for name in sorted(os.listdir(os.path.join(ROOT, "docs")))]
HISTORY = re.compile(r"an earlier (run|version)|at commit|did not finish|this session|a later re-run|"
                     r"we have not|not measured yet|issue \d", re.IGNORECASE)
MACHINE_PATH = re.compile(r"(?<![\w.])/(work|root|home|tmp|Users)/")


def _read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def test_ci_runs_the_readme_test_command():
    ci_command = [line for line in _read(".ci/run").splitlines() if "pytest" in line]
    assert len(ci_command) == 1
    assert ci_command[0].split("&& ")[-1] in _read("README.md")


def test_trime_user_dir_prints_the_package_folder(monkeypatch, capsys):
    from trime.cli.options import print_user_dir

    monkeypatch.setattr(sys, "argv", ["trime-user-dir"])
    print_user_dir()
    out = capsys.readouterr().out.strip()
    assert os.path.isfile(os.path.join(out, "__init__.py")) and os.path.basename(out) == "trime"


def test_readme_is_short_and_without_history_or_machine_paths():
    assert len(_read("README.md").splitlines()) <= 200
    for path in DOCS:
        text = _read(path)
        assert not HISTORY.search(text), f"{path}: {HISTORY.search(text).group(0)!r}"
        assert not MACHINE_PATH.search(text), f"{path}: {MACHINE_PATH.search(text).group(0)!r}"


def test_options_reference_is_generated_from_the_code():
    from trime.cli.options import option_table, options_markdown

    assert _read("docs/options.md") == options_markdown(), "regenerate: trime-options --markdown > docs/options.md"
    flags = [row["flag"] for row in option_table()]
    assert "--memory-temp" in flags and "--ce-warmup-updates" in flags and "--batching" in flags
    reference = _read("docs/options.md")
    for flag in flags:
        assert f"`{flag}" in reference, f"{flag} is not in docs/options.md"


def test_readme_links_resolve():
    for path in DOCS:
        folder = os.path.dirname(os.path.join(ROOT, path))
        for target in re.findall(r"\]\(([^)#]+)\)", _read(path)):
            if not target.startswith("http"):
                assert os.path.exists(os.path.join(folder, target)), f"{path} links to missing {target}"
