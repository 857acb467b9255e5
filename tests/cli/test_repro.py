"""trime-repro: every table entry point end to end on a tiny config (toy corpus, in-process steps),
resumable, and refusing to reuse what was made with other options."""

import json
import math
import os

import pytest

from trime.cli.toy_corpus import write_splits

pytestmark = pytest.mark.e2e  # trains and evaluates models with fairseq's console scripts


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    from trime.cli.repro import main

    root = tmp_path_factory.mktemp("repro")
    write_splits(root / "raw", train_stories=120, valid_stories=12, test_stories=12)
    common = [str(root / "raw"), "--work", str(root / "work"), "--out", str(root / "results"),
              "--preset", "tiny", "--in-process"]
    for table in ("table10", "table7", "table11", "table12", "table13", "table14", "table15",
                  "table15-seeds", "figure3"):
        main([table, *common])
    return root, common


def _table(root, table):
    with open(root / "results" / table / "table.json") as f:
        return json.load(f)


def test_table10_rows_commands_and_budget(reproduced):
    root, _ = reproduced
    report = _table(root, "table10")
    assert list(report["rows"]) == ["Transformer", "+ continuous cache", "kNN-LM",
                                    "kNN-LM + continuous cache", "TrimeLM", "TrimeLM_long",
                                    "TrimeLM_ext"]
    for name, row in report["rows"].items():
        assert math.isfinite(row["valid"]) and math.isfinite(row["test"]) and row["paper_test"], name
    assert report["rows"]["TrimeLM_ext"]["tuned_on_dev"]["--knn-lambda"] in (0, 0.3)
    memories = {name: row["options"][row["options"].index("--eval-memory") + 1]
                for name, row in report["rows"].items() if row["options"]}
    # the cache reads the local memory (paper §2.2, Table 12); only the TRIME rows read long memory
    assert memories == {"+ continuous cache": "local", "kNN-LM": "ext", "kNN-LM + continuous cache": "local,ext",
                        "TrimeLM": "local", "TrimeLM_long": "local,long", "TrimeLM_ext": "local,long,ext"}
    steps = report["steps"]
    vanilla = steps["train-vanilla"]["command"]
    assert vanilla[:2] == ["fairseq-train", "{work}/bin"]  # the work folder, portable
    assert vanilla[vanilla.index("--memory") + 1] == "none"
    assert "--memory" in steps["train-trime_ext"]["command"] and "bm25-batches" in steps
    assert all(s["seconds"] is not None for s in steps.values())
    assert report["budget"]["updates"] == 12 and report["commit"]
    markdown = (root / "results" / "table10" / "table.md").read_text()
    assert "| TrimeLM_ext |" in markdown and "paper test" in markdown


def test_table7_reuses_the_models_and_fills_every_cell(reproduced):
    root, _ = reproduced
    report = _table(root, "table7")
    assert list(report["rows"]) == ["TrimeLM", "TrimeLM_long", "TrimeLM_ext"]
    for cells in report["rows"].values():
        assert list(cells) == ["local", "local,long", "local,ext", "local,long,ext"]
        assert all(math.isfinite(cell["valid"]) for cell in cells.values())
    # the models of table10 were reused (their step records), not trained again
    table10_steps = _table(root, "table10")["steps"]
    trained = [name for name in report["steps"] if name.startswith("train-")]
    assert len(trained) == 3
    assert all(report["steps"][name] == table10_steps[name] for name in trained)
    # a cell with a Table 10 row's model and memory is that row's tuning run, not a second one
    table10 = _table(root, "table10")["rows"]
    for name, memory, tuning in (("TrimeLM", "local", "tune-trimelm"),
                                 ("TrimeLM_long", "local,long", "tune-trimelm-long"),
                                 ("TrimeLM_ext", "local,long,ext", "tune-trimelm-ext")):
        assert report["rows"][name][memory]["valid"] == table10[name]["valid"]
        assert report["steps"][tuning] == table10_steps[tuning]
    assert not {"tune-table7-trime-local", "tune-table7-trime_long-local-long",
                "tune-table7-trime_ext-local-long-ext"} & set(report["steps"])
    assert "tune-table7-trime_ext-local-ext" in report["steps"]


def test_table11_and_table15_train_the_variants(reproduced):
    import importlib.util

    root, _ = reproduced
    table11 = _table(root, "table11")
    assert list(table11["rows"]) == ["TrimeLM_ext", "w/o BM25 batching", "w/o back-prop to memory"]
    steps = table11["steps"]
    assert "--detach-memory" in steps["train-trime_ext_detached"]["command"]
    random = steps["train-trime_ext_random"]["command"]
    assert random[random.index("--batching") + 1] == "random" and "--bm25-batches" not in random
    table15 = _table(root, "table15")
    assert [row["p"] for row in table15["rows"].values()] == [0.0, 0.1, 0.5, 0.9, 1.0]
    # p = 0.9 is the default: Table 10's TrimeLM_ext, not trained again
    assert "train-trime_ext_p0.9" not in table15["steps"] and "train-trime_ext_p0" in table15["steps"]
    for report in (table11, table15):
        assert all(math.isfinite(row["valid"]) for row in report["rows"].values())
    # the default variant is Table 10's TrimeLM_ext with its tuning run
    table10_ext = _table(root, "table10")["rows"]["TrimeLM_ext"]["valid"]
    assert table11["rows"]["TrimeLM_ext"]["valid"] == table15["rows"]["p = 0.9"]["valid"] == table10_ext
    assert not any(step.startswith(("tune-table11-ext", "tune-table15-p0.9")) for step in {**steps, **table15["steps"]})
    if importlib.util.find_spec("matplotlib"):
        assert (root / "results" / "table15" / "table15.png").stat().st_size > 0


def test_table15_seeds_reuses_seed_1_and_trains_the_others(reproduced):
    """The seed study: seed 1 is Table 15's own p = 0 and p = 0.1 models (not trained again), seed
    2 trained with fairseq's --seed 2 under its own names, seed 3 only if seeds 1 and 2 disagree;
    the mean and sample standard deviation are those of the seeds' dev perplexities."""
    import statistics

    root, _ = reproduced
    report, table15 = _table(root, "table15-seeds"), _table(root, "table15")
    rows = report["rows"]
    assert list(rows) == ["p = 0", "p = 0.1"]
    for name, row in rows.items():
        assert row["seeds"]["1"]["valid"] == table15["rows"][name]["valid"]
        values = [cell["valid"] for cell in row["seeds"].values()]
        assert row["valid"] == pytest.approx(statistics.mean(values))
        assert row["std"] == pytest.approx(statistics.stdev(values))
    agree = (rows["p = 0.1"]["seeds"]["1"]["valid"] < rows["p = 0"]["seeds"]["1"]["valid"]) == (
        rows["p = 0.1"]["seeds"]["2"]["valid"] < rows["p = 0"]["seeds"]["2"]["valid"])
    assert list(rows["p = 0"]["seeds"]) == (["1", "2"] if agree else ["1", "2", "3"])
    steps = report["steps"]
    assert "--seed" in steps["train-trime_ext_p0_seed2"]["command"]
    seed = steps["train-trime_ext_p0_seed2"]["command"].index("--seed")
    assert steps["train-trime_ext_p0_seed2"]["command"][seed + 1] == "2"
    assert steps["train-trime_ext_p0"]["command"][seed + 1] == "1"
    # seed 2's BM25 chain has its own random restarts; seed 1's is Table 15's (the default seed)
    chain = steps["bm25-batches_seed2"]["command"]
    assert chain[chain.index("--seed") + 1] == "2" and "--seed" not in steps["bm25-batches"]["command"]
    assert "dstores/trime_ext_p0.1_seed2" in " ".join(rows["p = 0.1"]["seeds"]["2"]["options"])
    markdown = (root / "results" / "table15-seeds" / "table.md").read_text()
    assert "| p = 0 | " in markdown and "of 2 seeds" in markdown or "of 3 seeds" in markdown


def test_table11_reports_in_batch_targets_bm25_above_random(reproduced):
    root, _ = reproduced
    rows = _table(root, "table11")["rows"]
    bm25, random = rows["TrimeLM_ext"]["in_batch_targets"], rows["w/o BM25 batching"]["in_batch_targets"]
    assert 0 < random < bm25 < 1
    assert rows["w/o back-prop to memory"]["in_batch_targets"] == bm25
    assert "targets in the batch's other segments" in (root / "results" / "table11" / "table.md").read_text()


def test_table12_trains_each_length_with_the_same_tokens_per_update(reproduced):
    root, _ = reproduced
    report = _table(root, "table12")
    assert list(report["rows"]) == ["Transformer", "+ continuous cache", "TrimeLM"]
    for cells in report["rows"].values():
        assert list(cells) == ["16", "32", "64"]
        assert all(math.isfinite(cell["valid"]) for cell in cells.values())
        assert [cell["batch_size"] for cell in cells.values()] == [8, 4, 2]  # 128 tokens per update
    steps = report["steps"]
    for length, batch in ((16, 8), (32, 4), (64, 2)):
        command = steps[f"train-trime_L{length}"]["command"]
        assert command[command.index("--tokens-per-sample") + 1] == str(length)
        assert command[command.index("--batch-size") + 1] == str(batch)
        tuning = steps[f"tune-table12-trimelm_L{length}"]["command"]
        assert tuning[tuning.index("--tokens-per-sample") + 1] == str(length)
    # Table 10's L = 32 models are other models (batch 4 of the budget, not these)
    assert "train-trime" in _table(root, "table10")["steps"] and "train-trime" not in steps


def test_figure3_curves_start_at_local_memory(reproduced):
    import importlib.util

    root, _ = reproduced
    rows = _table(root, "figure3")["rows"]
    assert list(rows) == ["TrimeLM_long", "Transformer + continuous cache"]
    for row in rows.values():
        assert list(row["perplexity"]) == ["0", "32", "64"]
        assert all(math.isfinite(p) for p in row["perplexity"].values())
    assert "--memory-temp" in rows["TrimeLM_long"]["tuned_on_dev"]
    assert set(rows["Transformer + continuous cache"]["tuned_on_dev"]) == {"--cache-lambda", "--cache-theta"}
    tuning = _table(root, "figure3")["steps"]["tune-transformer-cache-long"]["command"]
    assert tuning[tuning.index("--eval-memory") + 1] == "local,long"  # tuned for the long memory
    if importlib.util.find_spec("matplotlib"):
        assert (root / "results" / "figure3" / "figure3.png").stat().st_size > 0


def test_table13_and_table14_read_table10s_tuning_runs(reproduced):
    import importlib.util

    root, _ = reproduced
    table13 = _table(root, "table13")["rows"]
    assert list(table13) == ["kNN-LM", "TrimeLM_ext"]
    for row in table13.values():  # the tiny preset retrieves K = 8
        assert list(row["accuracy"]) == ["1", "8"] and 0 <= row["accuracy"]["1"] <= row["accuracy"]["8"] <= 100
    report = _table(root, "table14")
    assert "train-vanilla" in report["steps"] and len(report["rows"]) == 5
    table10 = _table(root, "table10")["rows"]
    for name, row in report["rows"].items():
        assert list(row["buckets"]) == ["> 10k", "1k-10k", "100-1k", "10-100", "<= 10"]
        if name != "Transformer":  # the tuned dev perplexity of Table 10
            assert row["average"] == pytest.approx(table10[name]["valid"])
    assert report["rows"]["Transformer"]["average"] == pytest.approx(table10["Transformer"]["valid"], rel=1e-3)
    if importlib.util.find_spec("matplotlib"):
        assert (root / "results" / "table14" / "table14.png").stat().st_size > 0


def test_a_rerun_skips_every_step(reproduced, capsys):
    from trime.cli.repro import main

    root, common = reproduced
    before = _table(root, "table10")["rows"]
    main(["table10", *common])
    out = capsys.readouterr().out
    assert "skipped" in out and "fairseq-train " not in out.replace("skipped", "")
    assert _table(root, "table10")["rows"] == before


@pytest.mark.parametrize("table", ["table10", "table7", "table11", "table12", "table13", "table14",
                                   "table15", "table15-seeds", "figure3"])
def test_a_dry_run_prints_the_commands_the_run_recorded(reproduced, capsys, table):
    """--dry-run walks the same steps: each printed command (tuned values read by the shell from
    trime-tune's best.args) is the one the run recorded, and nothing is run or written."""
    import re
    import shlex

    from trime.cli.repro import main

    root, common = reproduced
    steps = sorted((root / "work" / "steps").iterdir())
    main([table, *common, "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert sorted((root / "work" / "steps").iterdir()) == steps
    names = [line[2:] for line in lines if line.startswith("# ")]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert len(names) == len(commands) > 0
    for name, command in zip(names, commands):
        command = re.sub(r"\$\(cat (\S+)\)", lambda m: open(shlex.split(m.group(1))[0]).read().strip(),
                         command)  # the values trime-tune chose
        # the record keeps the work folder and the user dir as placeholders (Runner.portable)
        command = command.replace('"$(trime-user-dir)"', "{user_dir}").replace(str(root / "work"), "{work}")
        with open(root / "work" / "steps" / f"{name}.json") as f:
            recorded = json.load(f)["command"]
        assert list(map(_number, shlex.split(command))) == list(map(_number, recorded)), name


def _number(word):
    """A command word, numbers compared by value (best.args writes 1 where the run wrote 1.0)."""
    try:
        return float(word)
    except ValueError:
        return word


def test_table5_scores_table10s_models_on_books(reproduced, tmp_path):
    """The CPU analog of Table 5: Table 10's models (not trained again) on held-out books prepared
    with the corpus's dictionary, with Wiki and Books datastores; tuned on the books' dev."""
    import random

    from trime.cli.repro import main

    root, common = reproduced
    raw = tmp_path / "raw-books"
    raw.mkdir()
    rng = random.Random(0)
    words = [line.split()[0] for line in open(root / "work" / "bin" / "dict.txt")][:40]
    for book in range(8):
        (raw / f"book{book}.txt").write_text("\n\n".join(
            " ".join(rng.choice(words) for _ in range(15)) + "." for _ in range(8)))
    steps_before = set(os.listdir(root / "work" / "steps"))
    main(["table5", *common, "--books", str(tmp_path / "books"), "--books-raw", str(raw)])
    new_steps = set(os.listdir(root / "work" / "steps")) - steps_before
    assert not any(step.startswith("train-") for step in new_steps)  # Table 10's models
    assert {"prepare-books.json", "dstore-vanilla-books.json", "index-trime_ext-books-ip.json"} <= new_steps
    rows = _table(root, "table5")["rows"]
    assert list(rows) == ["Transformer", "TrimeLM", "TrimeLM_long", "kNN-LM + continuous cache (Wiki)",
                          "TrimeLM_ext (Wiki)", "kNN-LM + continuous cache (Books)", "TrimeLM_ext (Books)"]
    assert all(math.isfinite(row["test"]) and row["test"] > 1 for row in rows.values())
    assert "dstores/vanilla-books" in " ".join(rows["kNN-LM + continuous cache (Books)"]["options"])
    orderings = json.load(open(root / "results" / "orderings.json"))
    assert any(claim["table"] == "table5" for claim in orderings)


def test_table4_on_bytes_chooses_the_long_memory_on_dev(tmp_path):
    """The CPU analog of Table 4: books as bytes (trime-prepare-enwik8 --books), Transformer, + cache,
    TrimeLM, TrimeLM_long in bits per byte, TrimeLM_long's S chosen on dev from the budget's sizes."""
    from console import run
    from trime.cli.repro import main

    books = tmp_path / "books"
    books.mkdir()
    for i in range(4):
        (books / f"b{i}.txt").write_text("".join(f"line {j} of book {i}, some words here.\n"
                                                 + ("\n" if j % 5 == 4 else "") for j in range(60)))
    run("trime-prepare-enwik8", tmp_path / "bytes", "--books", books, "--valid-books", "b1.txt",
        "--test-books", "b2.txt")
    main(["table4", str(tmp_path / "bytes" / "raw"), "--work", str(tmp_path / "work"), "--out",
          str(tmp_path / "results"), "--preset", "tiny", "--in-process"])
    with open(tmp_path / "results" / "table4" / "table.json") as f:
        rows = json.load(f)["rows"]
    assert list(rows) == ["Transformer", "+ continuous cache*", "TrimeLM", "TrimeLM_long"]
    long = rows["TrimeLM_long"]
    curve = {int(size): value for size, value in long["dev_by_size"].items()}
    assert sorted(curve) == [0, 32, 64] and long["valid"] == min(curve.values())
    assert curve[long["long_memory_size"]] == long["valid"]
    assert all(math.isfinite(row["test_bpc"]) and row["test_bpc"] > 0 for row in rows.values())


def test_other_options_are_refused_not_mixed(reproduced, capsys):
    from trime.cli.repro import main

    root, common = reproduced
    with pytest.raises(SystemExit):
        main(["table10", *common, "--updates", "13"])
    err = capsys.readouterr().err
    assert "train-vanilla" in err and "was run with other options" in err and "--work" in err


def test_a_data_folder_without_the_splits_is_refused(tmp_path, capsys):
    from trime.cli.repro import main

    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "train.txt").write_text("a b c\n")
    with pytest.raises(SystemExit):
        main(["table10", str(tmp_path / "raw"), "--work", str(tmp_path / "w"), "--preset", "tiny"])
    assert "no valid split" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "w" / "bin")


def test_run_many_runs_steps_side_by_side_and_refuses_in_process_jobs(tmp_path):
    from trime.repro.runner import Runner

    runner = Runner(str(tmp_path / "work"), echo=lambda line: None, jobs=2)
    records = runner.run_many([("a", ["trime-user-dir"]), ("b", ["trime-user-dir"])])
    assert [r["done"] for r in records] == [True, True]
    assert runner.log_text("a").strip().endswith("trime_fairseq")
    with pytest.raises(ValueError, match="one at a time"):
        Runner(str(tmp_path / "w2"), in_process=True, jobs=2)


def test_orderings_are_checked_for_ours_and_the_papers_numbers():
    from trime.repro.orderings import check_claims
    from trime.repro.tables import PAPER_TABLE10

    rows = {name: {"valid": dev, "test": test, "paper_dev": dev, "paper_test": test}
            for name, (dev, test) in PAPER_TABLE10.items()}
    checked = check_claims({"table10": rows})
    assert len(checked) == 6 and all(c["holds"] and c["holds_in_paper"] for c in checked)
    rows["TrimeLM_ext"]["test"] = 0.95 * rows["Transformer"]["test"]  # < 10% below: fails two claims
    failed = [c["claim"] for c in check_claims({"table10": rows}) if not c["holds"]]
    assert failed == ["TrimeLM_ext < kNN-LM + continuous cache",
                      "TrimeLM_ext at least 10% below Transformer"]


def test_table7_orderings_read_the_model_and_memory_cell():
    from trime.repro.orderings import check_claims
    from trime.repro.tables import PAPER_TABLE7

    rows = {model: {memory: {"valid": ppl, "paper_dev": ppl} for memory, ppl in cells.items()}
            for model, cells in PAPER_TABLE7.items()}
    checked = check_claims({"table7": rows})
    assert [c["claim"] for c in checked] == [
        "TrimeLM_long: local + long < local", "TrimeLM_ext: local + long + ext < local + long",
        "TrimeLM_ext < TrimeLM_long, both with local + long + ext"]
    assert all(c["holds"] and c["holds_in_paper"] for c in checked)
    assert checked[0]["ours"] == (17.01, 17.12)
    rows["TrimeLM_ext"]["local,long,ext"]["valid"] = 18.0  # ext no longer helps: two claims fail
    assert [c["holds"] for c in check_claims({"table7": rows})] == [True, False, False]


def test_bleu_orderings_hold_when_higher():
    """Multi30k's claims compare BLEU: the better row must score higher, ours and the paper's."""
    from trime.repro.orderings import check_claims

    rows = {name: {"test_bleu": bleu, "paper_test": bleu} for name, bleu in (
        ("Transformer", 32.58), ("+ kNN-MT", 33.15), ("TrimeMT_ext, 16 length buckets", 33.73),
        ("TrimeMT_ext, one chain", 33.73), ("TrimeMT_ext, one chain, 8192", 33.73))}
    checked = check_claims({"multi30k": rows})
    assert len(checked) == 4 and all(c["holds"] and c["holds_in_paper"] for c in checked)
    rows["TrimeMT_ext, one chain"]["test_bleu"] = 33.0  # below kNN-MT: that claim alone fails
    assert [c["holds"] for c in check_claims({"multi30k": rows})] == [True, True, False, True]


def test_table12_orderings_name_the_lengths_of_the_table():
    from trime.repro.orderings import check_claims
    from trime.repro.tables import PAPER_TABLE12

    rows = {name: {str(length): {"valid": ppl, "paper_dev": ppl} for length, ppl in cells.items()}
            for name, cells in PAPER_TABLE12.items()}  # the paper lists L = 3072 first
    checked = check_claims({"table12": rows})
    assert [c["claim"] for c in checked] == [
        "TrimeLM: L = 3072 < L = 512", "TrimeLM: L = 512 < L = 150",
        "+ continuous cache: L = 3072 < L = 150", "TrimeLM < + continuous cache, L = 3072",
        "TrimeLM < + continuous cache, L = 150"]
    assert all(c["holds"] and c["holds_in_paper"] for c in checked)
    assert checked[0]["ours"] == (54.89, 63.22)
    rows["TrimeLM"]["150"]["valid"] = 60.0  # L = 150 now beats L = 512: one claim fails
    assert [c["holds"] for c in check_claims({"table12": rows})] == [True, False, True, True, True]


def test_orderings_file_covers_the_tables_written(reproduced):
    root, _ = reproduced
    checked = json.loads((root / "results" / "orderings.json").read_text())
    checked = [c for c in checked if c["table"] != "table5"]  # written by its own test, maybe first
    assert {c["table"] for c in checked} == {"table7", "table10", "table11", "table12", "table15",
                                             "table15-seeds"}
    assert len(checked) == 21
    markdown = (root / "results" / "orderings.md").read_text()
    assert "| TrimeLM_ext at least 10% below Transformer |" in markdown
    # the tiny preset's own lengths: named in the claim, no paper cell to compare
    assert "| TrimeLM: L = 64 < L = 32 | valid |" in markdown and "| — | — |" in markdown


def test_orderings_link_the_analysis_only_where_one_is_written(tmp_path):
    from trime.repro.orderings import write_orderings
    from trime.repro.tables import PAPER_TABLE10

    rows = {name: {"valid": dev, "test": test, "paper_dev": dev, "paper_test": test}
            for name, (dev, test) in PAPER_TABLE10.items()}
    (tmp_path / "table10").mkdir()
    (tmp_path / "table10" / "table.json").write_text(json.dumps({"rows": rows}))
    assert "analysis.md" not in write_orderings(str(tmp_path))
    (tmp_path / "analysis.md").write_text("why\n")
    assert "[analysis.md](analysis.md)" in write_orderings(str(tmp_path))


def test_orderings_check_the_tables_of_another_budget_in_a_subfolder(tmp_path):
    """trime-repro table7 --updates 1600 --out results/updates-1600: its claims are checked in
    results/orderings.md beside the main table's, named by the subfolder."""
    from trime.repro.orderings import write_orderings
    from trime.repro.tables import PAPER_TABLE10

    for folder, shift in ((tmp_path, 0.0), (tmp_path / "updates-1600", 1000.0)):
        rows = {name: {"valid": dev, "test": test + (shift if name == "TrimeLM_ext" else 0),
                       "paper_dev": dev, "paper_test": test}
                for name, (dev, test) in PAPER_TABLE10.items()}
        (folder / "table10").mkdir(parents=True)
        (folder / "table10" / "table.json").write_text(json.dumps({"rows": rows}))
    (tmp_path / "notes").mkdir()  # a folder without tables is not a budget
    markdown = write_orderings(str(tmp_path))
    checked = json.loads((tmp_path / "orderings.json").read_text())
    assert {c["table"] for c in checked} == {"table10", "updates-1600/table10"}
    main = {c["claim"]: c["holds"] for c in checked if c["table"] == "table10"}
    other = {c["claim"]: c["holds"] for c in checked if c["table"] == "updates-1600/table10"}
    assert main["TrimeLM_ext < kNN-LM + continuous cache"] and not other["TrimeLM_ext < kNN-LM + continuous cache"]
    assert "[updates-1600/table10](updates-1600/table10/table.md)" in markdown
