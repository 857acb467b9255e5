"""Results that travel: results/ names no path of the machine that made it, and a work folder (or
checkout) that moved still resumes: step records keep {work} and {user_dir} (Runner.portable)."""

import csv
import glob
import json
import os
import re
import shutil

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
# an absolute path where a word starts; fairseq's printed configs hold its default plasma path,
# which is not a path of this machine
ABSOLUTE = re.compile(r"(?:^|[\s\"'=(:,`\[])(/(?:work|home|root|Users|mnt|tmp|var|opt|srv)/[^\s\"',)]*)")
ALLOWED = {"/tmp/plasma"}
TEXT = (".json", ".md", ".log", ".csv", ".sh", ".args", ".txt", ".jsonl")


def test_results_hold_no_absolute_path():
    found = []
    for folder, _, names in os.walk(os.path.join(ROOT, "results")):
        for name in names:
            if not name.endswith(TEXT):
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8", errors="replace") as f:
                for number, line in enumerate(f, 1):
                    found += [f"{os.path.relpath(path, ROOT)}:{number}: {match}"
                              for match in ABSOLUTE.findall(line) if match not in ALLOWED]
    assert not found, "absolute paths in results/:\n" + "\n".join(found[:20])


def test_the_check_finds_an_absolute_path():
    assert ABSOLUTE.findall('"--save-dir", "/work/runs/x/models"') == ["/work/runs/x/models"]
    assert ABSOLUTE.findall("data=.m30k/work/dstore") == []  # relative: not one


def test_a_moved_work_folder_resumes(tmp_path):
    import trime
    from trime.repro.runner import Runner

    def command(runner):  # a step that names trime's user dir and a file of its work folder
        return ["python", "-c", "pass", "--user-dir", trime.USER_DIR, runner.path("models", "m")]

    first = Runner(str(tmp_path / "a"), echo=lambda line: None)
    first.run("step", command(first))
    with open(tmp_path / "a" / "steps" / "step.json") as f:
        record = json.load(f)
    assert record["command"] == ["python", "-c", "pass", "--user-dir", "{user_dir}", "{work}/models/m"]
    assert record["log"] == "{work}/logs/step.log"
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    lines = []
    moved = Runner(str(tmp_path / "b"), echo=lines.append)
    moved.run("step", command(moved))
    assert lines == ["== step: done (0 s), skipped"]
    # a record written before (absolute paths, another checkout's user dir) reads the same
    with open(tmp_path / "b" / "steps" / "step.json", "w") as f:
        json.dump({"command": ["python", "-c", "pass", "--user-dir", "/elsewhere/trime",
                               str(tmp_path / "b" / "models" / "m")], "done": True, "seconds": 1.0}, f)
    moved.run("step", command(moved))
    assert lines[-1] == "== step: done (1 s), skipped"


def test_books_inside_the_work_folder_are_recorded_as_work_from_any_folder(tmp_path, monkeypatch):
    """--books given relative to where trime-repro runs still names {work}/books in the records."""
    from trime.repro.recipes import PRESETS, Recipes
    from trime.repro.runner import Runner

    runner = Runner(str(tmp_path / "work"), echo=lambda line: None)
    monkeypatch.chdir(tmp_path)
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.txt").write_text("a b\n")
    recipes = Recipes(runner, str(tmp_path), PRESETS["cpu"], books=os.path.join("work", "books"))
    books = recipes.on_corpus(recipes.books_dir, "books", "-books")
    assert runner.portable([books.bin]) == ["{work}/books/data-bin"]


def test_an_interrupted_step_keeps_every_attempts_log_and_time(tmp_path):
    """A step rerun after an interruption (a training resumed from checkpoint_last.pt) appends to
    its log and adds the earlier attempt's time; a finished step whose outputs are gone starts
    afresh."""
    import pytest

    from trime.repro.runner import Runner

    flag, output = tmp_path / "flag", tmp_path / "output"
    code = (f"import os, sys, time; time.sleep(0.3); print('attempt', flush=True); "
            f"sys.exit(0 if os.path.exists({str(flag)!r}) else 1)")
    runner = Runner(str(tmp_path / "work"), echo=lambda line: None)
    with pytest.raises(RuntimeError, match="rerun to resume"):
        runner.run("step", ["python", "-c", code])
    flag.write_text("")
    record = runner.run("step", ["python", "-c", code])
    log = runner.log_text("step")
    assert record["attempts"] == 2 and log.count("attempt\n") == 2 and "attempt 2, resumed" in log
    assert record["earlier_seconds"] >= 0.3 and record["seconds"] >= record["earlier_seconds"] + 0.3
    output.write_text("")
    runner.run("other", ["python", "-c", "print('made')"], done_if=[str(output)])
    output.unlink()
    record = runner.run("other", ["python", "-c", "print('made')"], done_if=[str(output)])
    assert "attempts" not in record and runner.log_text("other") == "made\n"


def test_keep_work_writes_records_without_machine_paths(tmp_path):
    """scripts/keep_work.py: a work folder's records kept in results/ name {work} and {user_dir}."""
    import importlib.util

    import trime

    spec = importlib.util.spec_from_file_location("keep_work", os.path.join(ROOT, "scripts", "keep_work.py"))
    keep_work = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(keep_work)
    work = tmp_path / "work"
    (work / "logs").mkdir(parents=True)
    (work / "steps").mkdir()
    (work / "steps" / "s.json").write_text(json.dumps({"command": ["x", str(work / "bin"), trime.USER_DIR]}))
    (work / "logs" / "s.log").write_text(f"read {work}/bin/dict.txt with {trime.USER_DIR}\n")
    (work / "logs" / "plot.png").write_bytes(b"\x89PNG" + str(work).encode())  # copied as it is
    keep_work.keep(str(work), str(tmp_path / "kept"), [])
    assert json.loads((tmp_path / "kept" / "steps" / "s.json").read_text())["command"] == [
        "x", "{work}/bin", "{user_dir}"]
    assert (tmp_path / "kept" / "logs" / "s.log").read_text() == "read {work}/bin/dict.txt with {user_dir}\n"
    assert (tmp_path / "kept" / "logs" / "plot.png").read_bytes() == (work / "logs" / "plot.png").read_bytes()


def test_keep_work_names_a_folder_outside_the_work_folder_by_its_word(tmp_path):
    """keep_work --outside PATH=WORD: a data folder the records name (e.g. --books) is written as WORD."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("keep_work", os.path.join(ROOT, "scripts", "keep_work.py"))
    keep_work = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(keep_work)
    work, books = tmp_path / "work", tmp_path / "books"
    (work / "logs").mkdir(parents=True)
    (work / "steps").mkdir()
    (work / "logs" / "s.log").write_text(f"scored {books}/data-bin/test with {work}/bin\n")
    with pytest.raises(SystemExit):  # a pair without "=" is refused before anything is written
        keep_work.main([str(work), str(tmp_path / "kept"), "--outside", str(books)])
    assert not (tmp_path / "kept").exists()
    keep_work.main([str(work), str(tmp_path / "kept"), "--outside", f"{books}={{books}}"])
    assert (tmp_path / "kept" / "logs" / "s.log").read_text() == "scored {books}/data-bin/test with {work}/bin\n"


def test_every_reported_test_bleu_rescores_from_kept_files():
    """Every test decode in results/ (a test-*/tune.csv row) keeps its hypotheses beside the
    references, and sacrebleu's corpus BLEU of the two files is the BLEU reported."""
    import sacrebleu

    tables = glob.glob(os.path.join(ROOT, "results", "**", "test-*", "tune.csv"), recursive=True)
    assert tables, "no test decode in results/"
    wrong = []
    for table in tables:
        folder = os.path.dirname(table)
        with open(os.path.join(folder, "ref.txt"), encoding="utf-8") as f:
            references = f.read().splitlines()
        with open(table, encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            with open(os.path.join(folder, row["hypotheses"]), encoding="utf-8") as f:
                hypotheses = f.read().splitlines()
            assert len(hypotheses) == len(references), row["hypotheses"]
            bleu = sacrebleu.metrics.BLEU().corpus_score(hypotheses, [references]).score
            if abs(bleu - float(row["bleu"])) > 1e-6:
                wrong.append(f"{os.path.relpath(table, ROOT)} {row['hypotheses']}: {bleu} != {row['bleu']}")
    assert not wrong, "\n".join(wrong)
