"""trime-repro hf-wikitext2 on the tiny preset (toy stories, in-process): three transformers models
trained with the same budget, each scored with every memory on dev and test, TrimeLM_ext with its
own datastore, and the step-time ratio; a rerun skips every step; the dry run prints the commands."""

import json

import pytest

pytest.importorskip("transformers")
pytestmark = pytest.mark.e2e  # trains three tiny models

from trime.cli.toy_corpus import write_splits  # noqa: E402


def test_hf_wikitext2_tiny(tmp_path, capsys):
    from trime.cli.repro import main

    write_splits(tmp_path / "raw", train_stories=40, valid_stories=6, test_stories=6)
    argv = ["hf-wikitext2", str(tmp_path / "raw"), "--work", str(tmp_path / "work"), "--out",
            str(tmp_path / "results"), "--preset", "tiny", "--in-process"]
    main(argv)
    report = json.loads((tmp_path / "results" / "hf-wikitext2" / "table.json").read_text())
    rows = report["rows"]
    assert set(rows["TrimeLM_ext"]) == {"none", "local", "local,long", "local,long,ext"}
    for name in ("Transformer", "TrimeLM"):
        assert set(rows[name]) == {"none", "local", "local,long"}
    for name in ("Transformer", "TrimeLM", "TrimeLM_ext"):
        for cell in rows[name].values():
            assert cell["valid"] > 1 and cell["test"] > 1
    step = rows["step time"]
    assert set(step["ratio_to_plain"]) == {"none", "local", "ext"} and step["ratio_to_plain"]["none"] == 1
    assert any(name.startswith("hf-train-") for name in report["steps"])
    markdown = (tmp_path / "results" / "hf-wikitext2" / "table.md").read_text()
    assert "TrimeLM_ext (ext)" in markdown and "× the plain loss" in markdown
    capsys.readouterr()
    main(argv)  # everything done: skipped
    assert "hf-train-ext: done" in capsys.readouterr().out
    main([*argv[:-1], "--dry-run"])
    assert "trime-hf-train" in capsys.readouterr().out
