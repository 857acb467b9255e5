"""BM25 batching for translation: trime-bm25-batches --source-lang/--target-lang orders the
training pairs by Algorithm 1's chain over their target sentences, and --task trime_translation
--batching bm25 hands fairseq that order, which its --max-tokens batching cuts into batches."""

import json
import random

import pytest

from console import run

pytestmark = pytest.mark.e2e  # binarises a toy corpus with fairseq-preprocess


def _write_pairs(folder, name, num_pairs, seed):
    """Pairs 2i and 2i+1 share a target word (T<i>) found nowhere else; the sources are random."""
    rng = random.Random(seed)
    common = [f"c{i}" for i in range(6)]
    with open(folder / f"{name}.de", "w") as de, open(folder / f"{name}.en", "w") as en:
        for pair in range(num_pairs):
            de.write(" ".join(rng.choice(common) for _ in range(5)) + "\n")
            words = [f"T{pair // 2}"] + [rng.choice(common) for _ in range(3)]
            rng.shuffle(words)
            en.write(" ".join(words) + "\n")
    return str(folder / name)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt_bm25")
    train, valid = _write_pairs(root, "train", 40, 0), _write_pairs(root, "valid", 6, 1)
    run("fairseq-preprocess", "--source-lang", "de", "--target-lang", "en", "--trainpref", train,
        "--validpref", valid, "--destdir", root / "bin", "--workers", "1")
    order_file = root / "order.json"
    run("trime-bm25-batches", root / "bin", "-s", "de", "-t", "en", "--k", "3",
        "--report-max-tokens", "24", "--length-buckets", "1", "-o", order_file)
    return root, order_file


def test_the_chain_runs_over_the_target_sentences(data):
    root, order_file = data
    content = json.loads(order_file.read_text())
    assert content["format"] == "trime-bm25-order/1"
    assert (content["source_lang"], content["target_lang"], content["num_pairs"]) == ("de", "en", 40)
    order = content["order"]
    assert sorted(order) == list(range(40))
    position = {pair: i for i, pair in enumerate(order)}
    # each pair's only BM25 neighbour with a shared rare word is its partner: the chain goes
    # there next (or came from there)
    assert all(abs(position[2 * i] - position[2 * i + 1]) == 1 for i in range(20))
    # the file reports how often a target token is in another target sentence of its batch:
    # the partners' shared word mostly is with BM25, seldom in fairseq's size-sorted batches
    # (every word of this toy counts as rare: the common ones are there with either batching)
    coverage = content["in_batch_coverage"]
    assert coverage["max_tokens"] == 24
    assert coverage["bm25"]["rare"] > coverage["length_sorted"]["rare"] + 0.15


def test_length_buckets_pack_pairs_of_similar_length_with_less_padding(tmp_path):
    """Algorithm 1 chained inside buckets of similar length: every pair exactly once, and the
    --max-tokens batches carry less padding than one chain over all pairs (printed and
    recorded), with in-batch coverage still above fairseq's length-sorted batches."""
    rng = random.Random(2)
    topics = [[f"t{topic}w{i}" for i in range(8)] for topic in range(6)]
    with open(tmp_path / "train.de", "w") as de, open(tmp_path / "train.en", "w") as en:
        for pair in range(120):
            words = topics[pair % 6]
            length = rng.choice([2, 3, 4, 12, 14, 16, 30, 34])
            en.write(" ".join(rng.choice(words) for _ in range(length)) + "\n")
            de.write(" ".join(rng.choice(words) for _ in range(length)) + "\n")
    run("fairseq-preprocess", "--source-lang", "de", "--target-lang", "en", "--trainpref",
        tmp_path / "train", "--destdir", tmp_path / "bin", "--workers", "1")
    reports = {}
    for buckets in (1, 4):
        out = tmp_path / f"order{buckets}.json"
        _, log = run("trime-bm25-batches", tmp_path / "bin", "-s", "de", "-t", "en", "--k", "40",
                     "--report-max-tokens", "200", "--length-buckets", buckets, "-o", out)
        content = json.loads(out.read_text())
        assert sorted(content["order"]) == list(range(120))  # every pair exactly once
        # buckets of 30 pairs: --k 40 is cut to the 29 others in each, and recorded so
        assert content["k_per_bucket"] == ([40] if buckets == 1 else [29] * 4)
        assert content["k"] == max(content["k_per_bucket"])
        reports[buckets] = content["in_batch_coverage"]
        assert "padding" in log
    one, bucketed = reports[1]["bm25"], reports[4]["bm25"]
    assert bucketed["padding"] < one["padding"] - 0.15
    assert reports[4]["bm25_one_chain"] == one  # the report shows the plain chain beside
    assert bucketed["all"] > reports[4]["length_sorted"]["all"]
    code, log = run("trime-bm25-batches", tmp_path / "bin", "--tokens-per-sample", 8, "--batch-size",
                    2, "--length-buckets", 4, "-o", tmp_path / "x.json", check=False)
    assert code != 0 and "--length-buckets and --report-max-tokens are for translation" in log


def _task(root, extra):
    from fairseq_utils import TINY_TRANSLATION

    import trime
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [str(root / "bin"), "--user-dir", trime.USER_DIR, "--task", "trime_translation",
            "--criterion", "trime_mt_loss", *TINY_TRANSLATION, *extra]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    return tasks.setup_task(cfg.task)


def test_training_batches_are_cut_from_the_order(data):
    root, order_file = data
    task = _task(root, ["--batching", "bm25", "--bm25-batches", str(order_file)])
    task.load_dataset("train")
    dataset = task.dataset("train")
    iterator = task.get_batch_iterator(dataset, max_tokens=48, max_positions=(1024, 1024),
                                       required_batch_size_multiple=1, seed=3)
    batches = [sample["id"].tolist() for sample in iterator.next_epoch_itr(shuffle=True)]
    order = json.loads(order_file.read_text())["order"]
    position = {pair: i for i, pair in enumerate(order)}
    assert sorted(i for batch in batches for i in batch) == list(range(40))
    assert len(batches) > 2
    for batch in batches:  # a run of consecutive entries of the chain
        spots = sorted(position[i] for i in batch)
        assert spots == list(range(spots[0], spots[0] + len(batch)))
    partners = sum(any({2 * i, 2 * i + 1} <= set(b) for b in batches) for i in range(20))
    assert partners >= 15  # pairs split only where a batch ends
    random_task = _task(root, [])
    random_task.load_dataset("train")
    random_batches = [s["id"].tolist() for s in random_task.get_batch_iterator(
        random_task.dataset("train"), max_tokens=48, max_positions=(1024, 1024),
        required_batch_size_multiple=1, seed=3).next_epoch_itr(shuffle=True)]
    assert sum(any({2 * i, 2 * i + 1} <= set(b) for b in random_batches) for i in range(20)) < partners


def test_an_order_for_the_reverse_direction_is_refused(data, tmp_path):
    root, _ = data
    reverse = tmp_path / "reverse.json"
    run("trime-bm25-batches", root / "bin", "-s", "en", "-t", "de", "-o", reverse)
    task = _task(root, ["--batching", "bm25", "--bm25-batches", str(reverse)])
    with pytest.raises(ValueError, match="made for en->de, this training is de->en"):
        task.load_dataset("train")


def test_an_order_for_other_data_is_refused(data, tmp_path):
    root, order_file = data
    content = json.loads(order_file.read_text())
    content["num_pairs"], content["order"] = 41, content["order"] + [40]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(content))
    task = _task(root, ["--batching", "bm25", "--bm25-batches", str(other)])
    with pytest.raises(ValueError, match="made for 41 training pairs, this training set has 40"):
        task.load_dataset("train")
    content = json.loads(order_file.read_text())
    content["order"][0] = content["order"][1]
    other.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="not a permutation"):
        task.load_dataset("train")
    lm_file = tmp_path / "lm.json"
    lm_file.write_text(json.dumps({"format": "trime-bm25-batches/1", "batches": [[0]]}))
    task = _task(root, ["--batching", "bm25", "--bm25-batches", str(lm_file)])
    with pytest.raises(ValueError, match="expected 'trime-bm25-order/1'"):
        task.load_dataset("train")


def test_bm25_batching_needs_its_file(data):
    root, _ = data
    with pytest.raises(ValueError, match="`trime-bm25-batches .* --source-lang de --target-lang en -o "
                                         "bm25_order.json`"):
        _task(root, ["--batching", "bm25"])
    with pytest.raises(ValueError, match="--bm25-batches is read with --batching bm25 only"):
        _task(root, ["--bm25-batches", "order.json"])


@pytest.mark.parametrize("extra, message", [
    (["-s", "de", "-t", "en", "--batch-size", "4"], "--tokens-per-sample and --batch-size are for "
                                                     "language models"),
    (["-s", "de"], "need both --source-lang and --target-lang"),
    (["-s", "de", "-t", "fr"], "no dict.fr.txt"),
])
def test_the_tool_refuses_mixed_or_missing_options(data, tmp_path, extra, message):
    root, _ = data
    code, output = run("trime-bm25-batches", root / "bin", *extra, "-o", tmp_path / "x.json",
                       check=False)
    assert code != 0 and message in output
    assert not (tmp_path / "x.json").exists()
