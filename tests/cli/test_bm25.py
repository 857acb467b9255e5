"""BM25 packing of training segments (paper Appendix B, Algorithm 1): trime/bm25.py.

- the neighbours equal a naive BM25 written here with explicit loops;
- load_bm25_batches refuses files made for other data and damaged files;
- `trime-bm25-batches` (``trime.cli.bm25_batches.main``) on a tiny binarised corpus: its
  segments are the task's training segments, and the file's order is
  Algorithm 1's chain over those neighbours, cut into batches of B.
"""

import json
import math
import os

import numpy as np
import pytest

pytest.importorskip("fairseq")
pytest.importorskip("bm25s")

from fairseq.data import Dictionary  # noqa: E402

from console import preprocess  # noqa: E402
from fairseq_utils import build  # noqa: E402
from trime.cli.bm25_batches import main  # noqa: E402
from trime.core.bm25 import bm25_neighbours  # noqa: E402
from trime.core.batching import in_batch_target_coverage  # noqa: E402
from trime.lm.bm25_batches import (FORMAT, load_bm25_batches, save_bm25_batches,  # noqa: E402
                                   segment_token_ids, special_token_ids)
from trime.cli.toy_corpus import write_splits  # noqa: E402
from trime.extmem.fingerprints import dictionary_checksum  # noqa: E402

SPECIALS = (0, 1, 2, 3)  # <s> <pad> </s> <unk>
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def naive_bm25_scores(segments, k1=1.5, b=0.75, exclude=SPECIALS):
    """scores[q][d] = Σ_{t ∈ set(q)} IDF(t)·tf(t,d)·(k1+1) / (tf(t,d) + k1·(1 − b + b·|d|/avgdl)),
    IDF(t) = ln(1 + (N − df + 0.5)/(df + 0.5)); excluded ids are not terms."""
    docs = [[t for t in segment if t not in exclude] for segment in segments]
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / n
    df = {}
    for d in docs:
        for t in set(d):
            df[t] = df.get(t, 0) + 1
    scores = []
    for q in docs:
        row = []
        for d in docs:
            total = 0.0
            for t in sorted(set(q)):
                tf = d.count(t)
                if tf:
                    idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                    total += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avgdl))
            row.append(total)
        scores.append(row)
    return scores


def naive_neighbours(scores, k):
    """The k best other segments of each query, by (-score, id)."""
    return [sorted((d for d in range(len(row)) if d != q), key=lambda d: (-row[d], d))[:k]
            for q, row in enumerate(scores)]


def small_corpus():
    """~30 segments over ids 4..17, with specials, repeats, exact ties and an empty segment."""
    rng = np.random.default_rng(7)
    segments = []
    for i in range(24):
        length = int(rng.integers(3, 12))
        # a Zipf-like draw: id 4 is frequent, 17 is rare
        words = rng.choice(np.arange(4, 18), size=length, p=np.r_[14:0:-1] / np.r_[14:0:-1].sum())
        specials = rng.choice(SPECIALS, size=int(rng.integers(0, 3)))
        segments.append([int(t) for t in np.r_[words, specials]])
    segments.append([17, 17, 16, 2])  # rare words, repeated
    segments.append(segments[3][::-1])  # same bag as segment 3: exact ties
    segments.append(list(segments[10]))  # a copy of segment 10
    segments.append([2, 3, 1])  # only special tokens: no terms, scores 0
    segments.append([15, 15, 15, 15, 15, 15])
    segments.append([9])  # short last segment
    return segments


def test_small_corpus_has_exact_ties_and_no_near_ties():
    """The corpus tests tie-breaking: equal scores are exactly equal, others well apart."""
    scores = np.array(naive_bm25_scores(small_corpus()))
    assert (scores[25] == scores[3]).all() and (scores[:, 25] == scores[:, 3]).all()
    assert (scores[:, 27] == 0).all() and (scores[27] == 0).all()
    for row in scores:  # float32 rounding (~1e-7) cannot swap two distinct scores of a query
        values = np.unique(row.round(12))
        assert len(values) == 1 or np.diff(values).min() > 1e-5 * values.max()


@pytest.mark.parametrize("backend,dense_df_fraction", [
    ("matrix", 0.05), ("matrix", 0.0), ("matrix", 0.3), ("matrix", 2.0), ("bm25s", None)])
@pytest.mark.parametrize("k", [1, 5, 29])
def test_neighbours_equal_naive_bm25(backend, dense_df_fraction, k):
    segments = small_corpus()
    expected = naive_neighbours(naive_bm25_scores(segments), k)
    extra = {} if dense_df_fraction is None else {"dense_df_fraction": dense_df_fraction}
    got = bm25_neighbours(segments, k, exclude_ids=SPECIALS, backend=backend, chunk_size=7, **extra)
    assert got.shape == (len(segments), k)
    assert got.tolist() == expected


def test_neighbours_with_other_k1_b_and_no_exclusion():
    segments = small_corpus()
    expected = naive_neighbours(naive_bm25_scores(segments, k1=0.9, b=0.4, exclude=()), 6)
    for backend in ("matrix", "bm25s"):
        got = bm25_neighbours(segments, 6, k1=0.9, b=0.4, backend=backend)
        assert got.tolist() == expected


def test_neighbours_bad_k():
    with pytest.raises(ValueError, match="k must be >= 1"):
        bm25_neighbours(small_corpus(), 0)
    with pytest.raises(ValueError, match="use k <= 29"):
        bm25_neighbours(small_corpus(), 30)


# -- load_bm25_batches --------------------------------------------------------------

def _dictionary(extra=()):
    d = Dictionary()
    for word in ("the", "a", "of", *extra):
        d.add_symbol(word)
    return d


def _write(path, batches, dictionary, num_segments=6, tokens_per_sample=512, **overrides):
    fields = dict(data="bin", split="train", tokens_per_sample=tokens_per_sample,
                  num_segments=num_segments, dictionary_checksum=dictionary_checksum(dictionary),
                  k=2, seed=1, batch_size=4)
    fields.update(overrides)
    save_bm25_batches(str(path), batches, **fields)
    return str(path)


def test_load_accepts_a_matching_file(tmp_path):
    d = _dictionary()
    path = _write(tmp_path / "b.json", [[5, 0, 3, 1], [2, 4]], d)
    assert load_bm25_batches(path, 6, 512, d) == [[5, 0, 3, 1], [2, 4]]
    assert json.load(open(path))["format"] == FORMAT
    assert not os.path.exists(path + ".tmp")


@pytest.mark.parametrize("num_segments,tokens_per_sample,match", [
    (7, 512, r"made for 6 segments of 512 tokens, this training set has 7 segments of 512"),
    (6, 256, r"made for 6 segments of 512 tokens, .* 6 segments of 256 tokens.*"
             r"--tokens-per-sample 256"),
])
def test_load_refuses_other_segments_or_length(tmp_path, num_segments, tokens_per_sample, match):
    d = _dictionary()
    path = _write(tmp_path / "b.json", [[5, 0, 3, 1], [2, 4]], d)
    with pytest.raises(ValueError, match=match):
        load_bm25_batches(path, num_segments, tokens_per_sample, d)


def test_load_refuses_another_dictionary(tmp_path):
    path = _write(tmp_path / "b.json", [[5, 0, 3, 1], [2, 4]], _dictionary())
    with pytest.raises(ValueError, match="another dictionary.*rerun"):
        load_bm25_batches(path, 6, 512, _dictionary(extra=["new"]))


@pytest.mark.parametrize("batches", [
    [[5, 0, 3, 1], [2, 2]],  # 4 missing, 2 twice
    [[5, 0, 3, 1], [2]],  # 4 missing
    [[5, 0, 3, 1], [2, 4, 6]],  # 6 out of range
    [[5, 0, 3, 1, 2, 4, -1]],
])
def test_load_refuses_a_non_permutation(tmp_path, batches):
    d = _dictionary()
    path = _write(tmp_path / "b.json", batches, d)
    with pytest.raises(ValueError, match="not a permutation of the 6 segment ids"):
        load_bm25_batches(path, 6, 512, d)


def test_load_refuses_missing_unreadable_or_foreign_files(tmp_path):
    d = _dictionary()
    with pytest.raises(ValueError, match="does not exist.*trime-bm25-batches"):
        load_bm25_batches(str(tmp_path / "none.json"), 6, 512, d)
    (tmp_path / "bad.json").write_text('{"format": "trime-bm25-batches/1", "batc')
    with pytest.raises(ValueError, match="cannot read"):
        load_bm25_batches(str(tmp_path / "bad.json"), 6, 512, d)
    (tmp_path / "other.json").write_text('{"format": "something-else", "batches": []}')
    with pytest.raises(ValueError, match="not a trime-bm25-batches file"):
        load_bm25_batches(str(tmp_path / "other.json"), 6, 512, d)
    path = _write(tmp_path / "b.json", [[5, 0, 3, 1], ["2", 4]], d)
    with pytest.raises(ValueError, match="not non-empty lists of segment ids"):
        load_bm25_batches(path, 6, 512, d)


# -- the console script on a tiny binarised corpus ------------------------------------

L, K, B, SEED = 32, 4, 8, 5


@pytest.fixture(scope="module")
def toy_bin(tmp_path_factory):
    root = tmp_path_factory.mktemp("bm25")
    write_splits(root / "raw", train_stories=40, valid_stories=4, test_stories=4)
    preprocess(root / "raw", root / "bin")
    return root


@pytest.fixture(scope="module")
def toy_task(toy_bin):
    """The trime_lm task on the toy data with --tokens-per-sample L, and its training set."""
    task, _, _ = build(toy_bin / "bin", extra=["--tokens-per-sample", str(L)])
    task.load_dataset("train")
    return task, task.dataset("train")


@pytest.mark.e2e
def test_segments_are_the_task_training_segments(toy_bin, toy_task):
    task, train = toy_task
    segments = segment_token_ids(str(toy_bin / "bin"), "train", L, task.dictionary)
    assert len(segments) == len(train) > 50
    for i in (0, 1, len(train) // 2, len(train) - 1):
        assert segments[i].tolist() == train[i]["target"].tolist()
    assert [len(s) for s in segments[:-1]] == [L] * (len(segments) - 1)


@pytest.mark.e2e
def test_cli_writes_algorithm_1_batches(toy_bin, toy_task, tmp_path):
    out = tmp_path / "batches.json"
    out.write_text("an older file, replaced")
    main([str(toy_bin / "bin"), "--tokens-per-sample", str(L), "--k", str(K),
          "--batch-size", str(B), "--seed", str(SEED), "-o", str(out)])
    task, train = toy_task
    num = len(train)
    content = json.loads(out.read_text())
    assert not os.path.exists(str(out) + ".tmp")
    assert {key: content[key] for key in ("format", "split", "tokens_per_sample", "num_segments",
                                          "k", "batch_size", "seed")} == dict(
        format=FORMAT, split="train", tokens_per_sample=L, num_segments=num, k=K, batch_size=B,
        seed=SEED)
    assert content["data"] == str(toy_bin / "bin")
    batches = load_bm25_batches(str(out), num, L, task.dictionary)
    assert [len(batch) for batch in batches] == [B] * (num // B) + ([num % B] if num % B else [])
    order = [s for batch in batches for s in batch]
    assert sorted(order) == list(range(num))

    # Algorithm 1: the next entry is the first unused neighbour, or, when none is
    # left, the next unused segment of the seeded random restart order
    segments = segment_token_ids(str(toy_bin / "bin"), "train", L, task.dictionary)
    neighbours = bm25_neighbours(segments, K, exclude_ids=special_token_ids(task.dictionary))
    restarts = np.random.default_rng(SEED).permutation(num).tolist()
    assert order[0] == restarts[0]
    used, followed = set(), 0
    for current, following in zip(order, order[1:]):
        used.add(current)
        unused_neighbours = [int(n) for n in neighbours[current] if n not in used]
        if unused_neighbours:
            assert following == unused_neighbours[0]
            followed += 1
        else:
            assert following == next(s for s in restarts if s not in used)
    assert followed > 0.5 * num  # the toy stories give segments real neighbours


def test_wikitext2_has_4080_segments_of_512_tokens():
    data = os.path.join(REPO, "runs", "wikitext2", "bin")
    if not os.path.isfile(os.path.join(data, "train.bin")):
        pytest.skip("no binarised WikiText-2 at runs/wikitext2/bin")
    dictionary = Dictionary.load(os.path.join(data, "dict.txt"))
    segments = segment_token_ids(data, "train", 512, dictionary)
    assert len(segments) == 4080 == math.ceil(2_088_628 / 512)


@pytest.mark.e2e
@pytest.mark.parametrize("argv,message", [
    (["{missing}"], "does not exist"),
    (["{bin}", "--split", "nosuch"], "no nosuch.bin/.idx"),
    (["{bin}", "--k", "0"], "--k must be >= 1"),
    (["{bin}", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["{bin}", "--tokens-per-sample", "0"], "--tokens-per-sample must be >= 1"),
    (["{raw}"], "no dict.txt"),
])
def test_cli_refuses_bad_input(toy_bin, tmp_path, capsys, argv, message):
    names = dict(missing=tmp_path / "missing", bin=toy_bin / "bin", raw=toy_bin / "raw")
    argv = [a.format(**names) for a in argv]
    defaults = ["--tokens-per-sample", str(L), "--batch-size", str(B), "-o", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_info:
        main([argv[0], *defaults, *argv[1:]])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")


def test_cli_help_names_the_training_options(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--batching bm25 --bm25-batches FILE" in text
    assert "must equal the training" in text


def test_cli_records_in_batch_coverage_bm25_above_random(toy_bin, toy_task, tmp_path):
    out = tmp_path / "batches.json"
    main([str(toy_bin / "bin"), "--tokens-per-sample", str(L), "--k", str(K),
          "--batch-size", str(B), "--seed", str(SEED), "-o", str(out)])
    task, _ = toy_task
    coverage = json.loads(out.read_text())["in_batch_coverage"]
    segments = segment_token_ids(str(toy_bin / "bin"), "train", L, task.dictionary)
    batches = load_bm25_batches(str(out), len(segments), L, task.dictionary)
    rare = np.array(task.dictionary.count) <= 100
    assert coverage["bm25"] == pytest.approx(in_batch_target_coverage(segments, batches, rare))
    assert coverage["bm25"]["all"] > coverage["random"]["all"]
