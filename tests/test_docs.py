"""The README and docs/ stay a user's documentation, true to the code."""

import os
import re

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


def test_every_transformer_lm_command_sets_its_input_and_output_dims():
    """fairseq's transformer_lm sets --decoder-input-dim / --decoder-output-dim to 512 whatever
    --decoder-embed-dim is: a "d = 64" model without them has 512-wide embeddings behind
    projections. Every documented or scripted command gives them."""
    import glob

    paths = ["README.md", *glob.glob("docs/*.md", root_dir=ROOT), *glob.glob("configs/*.sh", root_dir=ROOT),
             *glob.glob("scripts/**/*.sh", root_dir=ROOT, recursive=True),
             *glob.glob("scripts/**/*.py", root_dir=ROOT, recursive=True), "trime/repro/recipes.py"]
    checked = 0
    for path in paths:
        text = _read(path)
        for arch in re.finditer(r"--arch[\"', ]+transformer_lm\b(?!_)", text):
            command = text[arch.end():arch.end() + 700]
            embed = re.search(r"--decoder-embed-dim[\"', ]+(\d+)", command)
            if embed is None:
                continue
            checked += 1
            for option in ("--decoder-input-dim", "--decoder-output-dim"):
                assert re.search(rf"{option}[\"', ]+{embed.group(1)}\b", command), \
                    f"{path}: --decoder-embed-dim {embed.group(1)} without {option} {embed.group(1)}"
    assert checked >= 8
