"""External memory end to end: trime-bm25-batches → fairseq-train --memory ext --batching bm25 →
fairseq-eval-lm --save-dstore → trime-build-index → fairseq-eval-lm --eval-memory local,long,ext;
kNN-LM on a vanilla model; trime-tune."""

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("fairseq")

from console import USER_DIR, last_float, preprocess, run  # noqa: E402
from trime.cli.toy_corpus import write_splits  # noqa: E402
from trime.extmem.datastore import Datastore  # noqa: E402

pytestmark = pytest.mark.e2e  # fairseq console scripts end to end

L = 32
MODEL = ["--arch", "transformer_lm", "--decoder-layers", "2", "--decoder-embed-dim", "32",
         "--decoder-ffn-embed-dim", "64", "--decoder-attention-heads", "2"]
DATA = ["--doc-boundary", "empty-line", "--tokens-per-sample", L]
TRAIN = ["--optimizer", "adam", "--lr", "1e-3", "--batch-size", 8, "--max-update", 6,
         "--no-epoch-checkpoints", "--cpu", "--num-workers", 0, "--seed", 3]
LOSS = r"Loss \(base 2\): ([0-9.]+)"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ext")
    write_splits(root / "raw", train_stories=40, valid_stories=5, test_stories=5)
    preprocess(root / "raw", root / "bin")
    run("trime-bm25-batches", root / "bin", "--tokens-per-sample", L, "--k", 5, "--batch-size", 8,
        "-o", root / "bm25.json")
    _, log = run("fairseq-train", root / "bin", *USER_DIR, "--task", "trime_lm", "--criterion",
                 "trime_loss", "--memory", "ext", "--batching", "bm25", "--bm25-batches",
                 root / "bm25.json", *DATA, *MODEL, *TRAIN, "--save-dir", root / "trime")
    assert "BM25 batches of up to 8 segments" in log
    assert math.isfinite(last_float(r"train \| epoch \d+ \| loss ([0-9.]+)", log))
    run("fairseq-train", root / "bin", *USER_DIR, "--task", "trime_lm", "--criterion",
        "cross_entropy", *DATA, *MODEL, *TRAIN, "--save-dir", root / "vanilla")
    return root


def _eval(root, model, *extra, split="valid", check=True):
    code, out = run("fairseq-eval-lm", root / "bin", *USER_DIR, "--task", "trime_lm", *DATA,
                    "--path", root / model / "checkpoint_last.pt", "--gen-subset", split,
                    "--batch-size", 4, "--cpu", *extra, check=check)
    return (last_float(LOSS, out) if code == 0 else None), out


@pytest.fixture(scope="module")
def trime_dstore(trained):
    root = trained
    _, out = _eval(root, "trime", "--save-dstore", root / "dstore", split="train")
    run("trime-build-index", root / "dstore", "--metric", "ip")
    return root / "dstore", out


def test_datastore_keys_are_the_criterions_g(trained, trime_dstore):
    """Row i of the datastore = the g(c) that trime_loss uses for token i of the train split."""
    from fairseq import checkpoint_utils

    import trime  # noqa: F401  (registers the task)

    root = trained
    dstore, log = trime_dstore
    meta = json.load(open(dstore / "meta.json"))
    keys = np.load(dstore / "keys.npy", mmap_mode="r")
    values = np.load(dstore / "values.npy")
    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(root / "trime" / "checkpoint_last.pt")], arg_overrides={"data": str(root / "bin")})
    model = models[0].eval()
    task.load_dataset("train")
    dataset = task.dataset("train")
    assert meta["num_tokens"] == len(values) == len(dataset.stream_tokens)
    assert meta["split"] == "train" and meta["dim"] == 32 and values.dtype == np.int32
    assert np.array_equal(values, dataset.stream_tokens)  # every token once, in stream order
    batch = dataset.collater([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        _, extra = model(**batch["net_input"])
    g = extra["trime_query"]  # what trime_loss reads (criterion.py)
    scored = batch["target"].ne(task.dictionary.pad())
    rows = (batch["trime_segment_start"][:, None] + torch.arange(g.shape[1])[None])[scored]
    assert torch.allclose(torch.from_numpy(keys[rows.numpy()].astype(np.float32)),
                          g[scored].half().float(), atol=1e-3)
    assert len(rows) == meta["num_tokens"]


def test_trime_ext_eval_is_finite(trained, trime_dstore):
    root = trained
    dstore, _ = trime_dstore
    local_long, _ = _eval(root, "trime", "--eval-memory", "local,long", "--long-memory-size", 200)
    ext, out = _eval(root, "trime", "--eval-memory", "local,long,ext", "--long-memory-size", 200,
                     "--dstore", dstore, "--knn-k", 16, "--context-window", 8)
    assert "datastore" in out and "K = 16" in out and math.isfinite(ext)
    assert "inf scores" not in out
    # λ = 0 and no retrieved entry close enough to matter is not assumed: only finiteness and that
    # ext memory changes the numbers
    assert ext != local_long
    # evaluating the split the datastore holds: each token's own entry is excluded
    own, out = _eval(root, "trime", "--eval-memory", "ext", "--dstore", dstore, "--knn-k", 8,
                     split="train")
    assert "own entry is excluded" in out and math.isfinite(own)


def test_knnlm_on_a_vanilla_model(trained):
    root = trained
    _, out = _eval(root, "vanilla", "--save-dstore", root / "vanilla_dstore", split="train")
    run("trime-build-index", root / "vanilla_dstore", "--metric", "l2", "--index-type", "ivfpq",
        "--nlist", 8, "--pq-m", 8, "--pq-bits", 4)
    plain, _ = _eval(root, "vanilla")
    knn, out = _eval(root, "vanilla", "--eval-memory", "ext", "--eval-scoring", "knnlm",
                     "--dstore", root / "vanilla_dstore", "--knn-k", 32, "--knn-nprobe", 4)
    assert "kNN-LM lambda = 0.25" in out and "sim = l2" in out and math.isfinite(knn)
    exact, _ = _eval(root, "vanilla", "--eval-memory", "ext", "--eval-scoring", "knnlm",
                     "--dstore", root / "vanilla_dstore", "--knn-k", 32, "--knn-nprobe", 4,
                     "--knn-exact-scores")
    assert math.isfinite(exact) and exact != knn
    off, _ = _eval(root, "vanilla", "--eval-memory", "ext", "--eval-scoring", "knnlm",
                   "--dstore", root / "vanilla_dstore", "--knn-lambda", 0)
    assert off == plain  # λ = 0 is the LM alone

    # kNN-LM + continuous cache over local memory: λ_c = 0 is the kNN-LM exactly
    knn_memory = ["--eval-scoring", "knnlm", "--dstore", root / "vanilla_dstore", "--knn-k", 32,
                  "--knn-nprobe", 4]
    no_cache, _ = _eval(root, "vanilla", "--eval-memory", "local,ext", *knn_memory,
                        "--cache-lambda", 0)
    assert no_cache == knn
    with_cache, out = _eval(root, "vanilla", "--eval-memory", "local,long,ext", *knn_memory,
                            "--cache-lambda", 0.2, "--cache-theta", 0.1, "--long-memory-size", 64)
    assert "then continuous cache lambda = 0.2" in out and math.isfinite(with_cache)
    assert with_cache != knn

    # trime-tune covers the cache's weight and θ: a grid point equals fairseq-eval-lm there
    import csv
    memory = ["--eval-memory", "local,ext", "--dstore", root / "vanilla_dstore", "--knn-k", 32,
              "--knn-nprobe", 4]
    run("trime-tune", root / "bin", "--path", root / "vanilla" / "checkpoint_last.pt",
        "--tokens-per-sample", L, "--batch-size", 4, "--cpu", "--scoring", "knnlm",
        "--interp-temps", "1", "--lambdas", "0.25", "--cache-lambdas", "0,0.2",
        "--cache-thetas", "0.1,0.5", "--out-dir", root / "tune_knn", "--",
        "--doc-boundary", "empty-line", *memory)
    rows = {(float(r["cache_lambda"]), float(r["cache_theta"])): float(r["loss"])
            for r in csv.DictReader(open(root / "tune_knn" / "tune.csv"))}
    assert len(rows) == 4
    assert abs(rows[(0.0, 0.1)] - knn) < 1e-4
    point, _ = _eval(root, "vanilla", *memory, "--eval-scoring", "knnlm", "--cache-lambda", 0.2,
                     "--cache-theta", 0.5)
    assert abs(rows[(0.2, 0.5)] - point) < 1e-4


def test_knnlm_on_an_imported_knnlm_datastore_equals_the_native_one(trained, tmp_path):
    """A datastore written as knnlm writes it (fp16 keys, int16 values, raw memmaps) with its
    FAISS index (build_dstore.py's IVFPQ, ids = rows), imported by trime-import-dstore, gives
    the same kNN-LM perplexity as trime's own datastore of the same keys with the same index."""
    import shutil

    from foreign_format import write_knnlm, write_knnlm_index

    root = trained
    native = tmp_path / "native"
    _eval(root, "vanilla", "--save-dstore", native, split="train")
    keys, values = np.load(native / "keys.npy"), np.load(native / "values.npy")
    write_knnlm(str(tmp_path / "dstore"), keys, values, fp16=True)
    write_knnlm_index(tmp_path / "knn.index", keys)  # their index, reused as is
    _, out = run("trime-import-dstore", tmp_path / "imported", "--dict", root / "bin" / "dict.txt",
                 "--dstore-filename", tmp_path / "dstore", "--dstore-size", len(values), "--dim",
                 keys.shape[1], "--dstore-fp16", "--index", tmp_path / "knn.index", "--path",
                 root / "vanilla" / "checkpoint_last.pt")
    assert "evaluate with --knn-sim l2" in out
    shutil.copyfile(tmp_path / "knn.index", native / "index.l2.faiss")
    memory = ["--eval-memory", "ext", "--eval-scoring", "knnlm", "--knn-k", 32, "--knn-nprobe", 2]
    for extra in ([], ["--knn-exact-scores"]):  # exact scores read the keys from knnlm's file
        ours, _ = _eval(root, "vanilla", *memory, *extra, "--dstore", native)
        imported, out = _eval(root, "vanilla", *memory, *extra, "--dstore", tmp_path / "imported")
        assert "imported from knnlm" in out and math.isfinite(imported)
        assert imported == ours
    plain, _ = _eval(root, "vanilla")
    assert imported != plain


def _interrupted_shard(root, model, path, num_shards, shard_id, batches):
    """What a killed ``fairseq-eval-lm --save-dstore PATH --num-shards N --shard-id I`` leaves:
    the shard's first ``batches`` batches scored (fairseq-eval-lm's own steps: the task's
    evaluation iterator, the model's forward and normalized probabilities), then nothing."""
    from fairseq import checkpoint_utils, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [str(root / "bin"), *USER_DIR, "--task", "trime_lm", *map(str, DATA), "--path",
            str(root / model / "checkpoint_last.pt"), "--gen-subset", "train", "--cpu",
            "--save-dstore", str(path)]
    args = options.parse_args_and_arch(options.get_eval_lm_parser(), argv)
    task = tasks.setup_task(convert_namespace_to_omegaconf(args).task)
    models, _ = checkpoint_utils.load_model_ensemble([argv[argv.index("--path") + 1]], task=task)
    task.load_dataset("train")
    iterator = task.eval_lm_dataloader(task.dataset("train"), batch_size=4, num_shards=num_shards,
                                       shard_id=shard_id)
    with torch.no_grad():
        for done, sample in enumerate(iterator):
            if done == batches:
                break  # killed here
            output = models[0].eval()(**sample["net_input"])
            models[0].get_normalized_probs(output, log_probs=True, sample=sample)


def test_a_datastore_in_two_shards_one_interrupted_merges_into_the_unsharded_one(trained, tmp_path):
    root = trained
    _eval(root, "vanilla", "--save-dstore", tmp_path / "whole", split="train")
    shard = ["--num-shards", 2, "--shard-id"]
    _eval(root, "vanilla", "--save-dstore", tmp_path / "ds.0", *shard, 0, split="train")
    _interrupted_shard(root, "vanilla", tmp_path / "ds.1", 2, 1, batches=2)
    assert (tmp_path / "ds.1.partial" / "written.npy").exists() and not (tmp_path / "ds.1").exists()
    _, out = _eval(root, "vanilla", "--save-dstore", tmp_path / "ds.1", *shard, 1, split="train")
    assert "resuming the datastore" in out and "2 batches were already in the resumed" in out
    failed, out = _eval(root, "vanilla", "--eval-memory", "ext", "--eval-scoring", "knnlm",
                        "--dstore", tmp_path / "ds.0", check=False)
    assert failed is None and "merge the shards first with `trime-merge-dstore" in out
    run("trime-merge-dstore", tmp_path / "merged", tmp_path / "ds.1", tmp_path / "ds.0")
    merged, whole = (Datastore.open(str(tmp_path / name)) for name in ("merged", "whole"))
    assert np.array_equal(merged.values, whole.values) and np.array_equal(merged.keys, whole.keys)
    assert merged.meta["values_checksum"] == whole.meta["values_checksum"]
    assert merged.meta["model_fingerprint"] == whole.meta["model_fingerprint"]
    # refused: a missing shard, a shard given twice, a shard of another model
    for shards, message in (([0], r"rows [0-9,]+\.\.[0-9,]+ are missing"),
                            ([0, 0, 1], "are in two shards")):
        code, out = run("trime-merge-dstore", tmp_path / "bad", *[tmp_path / f"ds.{i}" for i in shards],
                        check=False)
        assert code != 0 and __import__("re").search(message, out), out[-500:]
    _eval(root, "trime", "--save-dstore", tmp_path / "other.1", *shard, 1, split="train")
    code, out = run("trime-merge-dstore", tmp_path / "bad", tmp_path / "ds.0", tmp_path / "other.1",
                    check=False)
    assert code != 0 and "differ in model_fingerprint" in out and not (tmp_path / "bad").exists()


def test_tune_grid_points_equal_eval_lm(trained, trime_dstore):
    """trime-tune scores its grid from one pass; two of its points, run through fairseq-eval-lm."""
    import csv

    root = trained
    dstore, _ = trime_dstore
    memory = ["--eval-memory", "local,long,ext", "--long-memory-size", 100, "--dstore", dstore,
              "--knn-k", 16]
    _, out = run("trime-tune", root / "bin", "--path", root / "trime" / "checkpoint_last.pt",
                 "--tokens-per-sample", L, "--batch-size", 4, "--cpu", "--taus", "1.0,1.2",
                 "--interp-temps", "1,2", "--lambdas", "0,0.3", "--out-dir", root / "tune", "--",
                 "--doc-boundary", "empty-line", *memory)
    rows = {(float(r["tau"]), float(r["lambda"]), float(r["interp_temp"])): float(r["loss"])
            for r in csv.DictReader(open(root / "tune" / "tune.csv"))}
    assert len(rows) == 8 and "best: --memory-temp" in out
    for tau, lam, temp in ((1.2, 0.0, 1.0), (1.0, 0.3, 2.0)):
        loss, _ = _eval(root, "trime", *memory, "--memory-temp", tau, "--knn-lambda", lam,
                        "--knn-temp", temp)
        assert abs(rows[(tau, lam, temp)] - loss) < 1e-4
    best = json.load(open(root / "tune" / "best.json"))
    assert [a["K"] for a in best["retrieval_accuracy"]] == [1, 8]  # K <= --knn-k 16
    accuracy = [a["accuracy"] for a in best["retrieval_accuracy"]]
    assert 0 <= accuracy[0] <= accuracy[1] <= 1
    assert sum(b["tokens"] for b in best["frequency_buckets"]) == best["tokens"]


def test_bad_external_memory_options(trained, trime_dstore):
    root = trained
    dstore, _ = trime_dstore
    cases = [
        (["--eval-memory", "local,ext"], "needs --dstore DIR"),
        (["--eval-memory", "local,ext", "--dstore", dstore, "--knn-k", 10 ** 6], "larger than the datastore"),
        (["--eval-memory", "ext", "--dstore", dstore, "--knn-sim", "l2"], "trime-build-index .* --metric l2"),
        (["--save-dstore", dstore], "already exists"),
    ]
    for extra, message in cases:
        _, out = _eval(root, "trime", *extra, check=False)
        assert __import__("re").search(message, out), (extra, out[-1500:])


def test_bm25_batching_uses_the_file_and_refuses_another_dataset(trained):
    from fairseq_utils import build

    root = trained
    batches = json.load(open(root / "bm25.json"))["batches"]

    def task_for(length, batch_size=8):
        task, _, _ = build(root / "bin", ("--batching", "bm25", "--bm25-batches", str(root / "bm25.json"),
                                          "--memory", "ext", "--batch-size", str(batch_size),
                                          "--tokens-per-sample", str(length), "--doc-boundary",
                                          "empty-line"))
        task.load_dataset("train")
        return task

    task = task_for(L)
    epochs = []
    for epoch in (1, 2):
        itr = task.get_batch_iterator(task.dataset("train"), max_sentences=8, seed=1, epoch=epoch,
                                      disable_iterator_cache=True)
        epochs.append([sample["id"].tolist() for sample in itr.next_epoch_itr(shuffle=True)])
    for ids in epochs:  # every batch of the file, whole, in a shuffled order
        assert sorted(map(sorted, ids)) == sorted(map(sorted, batches))
    assert epochs[0] != epochs[1]
    with pytest.raises(ValueError, match="segments of 32 tokens.*rerun"):
        task = task_for(16)
        task.get_batch_iterator(task.dataset("train"), max_sentences=8)
    with pytest.raises(ValueError, match="--batch-size 8"):
        task = task_for(L, batch_size=4)
        task.get_batch_iterator(task.dataset("train"), max_sentences=4)


def test_bm25_batches_across_workers_split_one_file_batch_over_a_step(trained):
    """With N workers and memory across workers, a step's in-batch memory is one batch of the file
    (Algorithm 1 over every worker's segments, as the authors dealt N consecutive chain batches to
    the N GPUs of a step): worker i trains on its i-th slice."""
    from fairseq_utils import build

    root = trained
    batches = json.load(open(root / "bm25.json"))["batches"]  # of 8 segments
    task, _, _ = build(root / "bin", ("--batching", "bm25", "--bm25-batches", str(root / "bm25.json"),
                                      "--memory", "ext", "--batch-size", "4", "--tokens-per-sample",
                                      str(L), "--doc-boundary", "empty-line"))
    task.load_dataset("train")
    per_worker = []
    for shard in range(2):
        itr = task.get_batch_iterator(task.dataset("train"), max_sentences=4, seed=1, epoch=1,
                                      num_shards=2, shard_id=shard, disable_iterator_cache=True)
        per_worker.append([s["id"].tolist() if len(s) else [] for s in itr.next_epoch_itr(shuffle=True)])
    steps = [a + b for a, b in zip(*per_worker)]
    assert len(per_worker[0]) == len(per_worker[1]) == len(batches)
    assert sorted(map(sorted, steps)) == sorted(map(sorted, batches))
    assert all(len(ids) <= 4 for worker in per_worker for ids in worker)
    with pytest.raises(ValueError, match="steps of 6: rerun trime-bm25-batches with --batch-size 6"):
        itr = task.get_batch_iterator(task.dataset("train"), max_sentences=3, seed=1, epoch=1,
                                      num_shards=2, shard_id=0, disable_iterator_cache=True)
    with pytest.raises(ValueError, match="--bm25-batches is read with --batching bm25 only"):
        build(root / "bin", ("--bm25-batches", str(root / "bm25.json"), "--tokens-per-sample", str(L)))
    with pytest.raises(ValueError, match=rf"`trime-bm25-batches \S+ --split train --tokens-per-sample {L} "
                                         r"--batch-size 8 -o bm25.json`"):
        build(root / "bin", ("--batching", "bm25", "--tokens-per-sample", str(L), "--batch-size", "8"))
