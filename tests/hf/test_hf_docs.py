"""docs/huggingface.md's Python examples run as written (a plain loop, then TrimeTrainer)."""

import os
import re

import pytest

pytest.importorskip("transformers")

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                   "docs", "huggingface.md")


def test_the_examples_run(tmp_path, monkeypatch, capsys):
    with open(DOC) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(blocks[0], namespace)  # the plain loop
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(namespace["batches"]) and all("TRIME" in line for line in printed)
    exec(blocks[1].replace("max_steps=100", "max_steps=3, report_to=[], use_cpu=True, "
                           "save_strategy='no', disable_tqdm=True"), namespace)
    assert namespace["trainer"].state.global_step == 3
    exec(blocks[2], namespace)  # evaluation with long memory
    assert "'perplexity'" in capsys.readouterr().out
