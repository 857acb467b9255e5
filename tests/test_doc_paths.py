"""The CPU-sized runs of the docs (scripts/doc_paths.py) run end to end in --tiny mode on toy data."""

import gzip
import importlib.util
import os
import subprocess
import sys

import pytest

from parallel_toy import write_pairs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, "scripts", "doc_paths.py")

# what each path must leave in its work folder
EXPECTED = {
    "memories": ["data-bin/dict.txt", "ckpt/checkpoint_best.pt", "ckpt-long/checkpoint_best.pt",
                 "tune-long/best.json", "curve/curve.csv"],
    "cache": ["vanilla/checkpoint_best.pt", "tune-cache/best.json"],
    "external-memory": ["bm25.json", "ckpt/checkpoint_best.pt", "dstore/meta.json", "dstore/index.ip.faiss",
                        "tune-ext/best.json"],
    "knn-lm": ["vanilla/checkpoint_best.pt", "vanilla-dstore/meta.json", "vanilla-dstore/index.l2.faiss",
               "tune-knnlm/best.json"],
    "tuning": ["ckpt/checkpoint_best.pt", "tune-local/best.json", "tune-long/best.json"],
    "translation": ["prep/bin/dict.en.txt", "bm25_order.json", "trime/checkpoint_last.pt",
                    "vanilla/checkpoint_last.pt", "dstore-vanilla/index.l2.faiss",
                    "dstore-trime/index.ip.faiss", "tune-knnmt/best.json", "tune-trime/best.json"],
}


def _runner():
    spec = importlib.util.spec_from_file_location("doc_paths", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_path_is_in_the_docs_and_the_tiny_table_matches_them():
    runner = _runner()
    paths = runner.find_paths()
    assert sorted(paths) == sorted(EXPECTED)
    for name, blocks in paths.items():
        texts = runner.tiny_blocks(name, blocks)  # raises when an entry of the table matches nothing
        assert texts != [text for _, _, text in blocks]
        for _, _, text in blocks:
            assert "set -e" not in text  # the runner sets -euo pipefail for the whole path
            if "transformer_lm" in text:  # fairseq defaults these to 512 whatever the model's d
                assert "--decoder-input-dim" in text and "--decoder-output-dim" in text
    with pytest.raises(SystemExit, match="matches nothing"):
        runner.tiny_blocks("tuning", paths["tuning"], [(("tuning",), r"--no-such-option", "")])


def test_a_failing_step_stops_its_path(tmp_path):
    runner = _runner()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("<!-- cpu-path: demo -->\n```bash\nX=1\necho $X > one.txt\n```\n\n"
                               "<!-- cpu-path: demo -->\n```bash\nfalse | cat\necho never > two.txt\n```\n")
    blocks = runner.find_paths(str(docs))["demo"]
    with pytest.raises(SystemExit, match="failed in block 2"):
        runner.run_path("demo", [text for _, _, text in blocks], str(tmp_path / "work"), dict(os.environ))
    assert (tmp_path / "work" / "demo" / "one.txt").read_text() == "1\n"
    assert not (tmp_path / "work" / "demo" / "two.txt").exists()


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("doc-paths-data")
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "trime-toy-corpus"), str(root / "toy"),
                    "--train-stories", "200", "--valid-stories", "12", "--test-stories", "12"],
                   check=True, capture_output=True)
    wt2 = root / "wikitext-2"
    wt2.mkdir()
    for split in ("train", "valid", "test"):
        os.replace(root / "toy" / f"{split}.txt", wt2 / f"wiki.{split}.tokens")
    raw = root / "multi30k" / "raw"
    raw.mkdir(parents=True)
    for name, lines, seed in (("train", 300, 0), ("val", 24, 1), ("test_2016_flickr", 24, 2)):
        write_pairs(raw, name, lines, seed)
        for lang in ("de", "en"):  # Multi30k's raw files are gzipped
            plain = raw / f"{name}.{lang}"
            with open(plain, "rb") as f, gzip.open(f"{plain}.gz", "wb") as out:
                out.write(f.read())
            plain.unlink()
    return wt2, root / "multi30k"


@pytest.mark.e2e
def test_every_doc_path_runs_in_tiny_mode(toy_data, tmp_path):
    """The six paths, two at a time: their steps are mostly interpreter and fairseq start-up, one
    core each (one torch thread each, so the two do not oversubscribe 2 cores)."""
    from concurrent.futures import ThreadPoolExecutor

    wt2, multi30k = toy_data
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}

    def run(name):
        return subprocess.run([sys.executable, RUNNER, "--tiny", "--only", name, "--data-wt2", str(wt2),
                               "--data-multi30k", str(multi30k), "--work", str(tmp_path / name)],
                              capture_output=True, text=True, env=env)

    names = sorted(EXPECTED, key=lambda n: n != "translation")  # the longest first
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(names, pool.map(run, names)))
    paths = _runner().find_paths()
    for name, proc in results.items():
        assert proc.returncode == 0, f"{name}:\n" + proc.stdout[-6000:] + proc.stderr[-3000:]
        missing = [f for f in EXPECTED[name] if not (tmp_path / name / name / f).is_file()]
        assert not missing, f"{name}: missing {missing}\n{proc.stdout[-3000:]}"
        assert proc.stdout.count(" done in ") == len(paths[name])
