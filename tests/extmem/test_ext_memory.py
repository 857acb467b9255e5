"""External memory: kNN-LM and TrimeLM_ext distributions vs naive sums, datastores, FAISS retrieval."""

import json
import math
import os

import numpy as np
import pytest
import torch

from naive import brute_force_knn, knnlm_distribution, trime_ext_distribution
from trime.extmem.datastore import Datastore, DatastoreWriter
from trime.extmem.index import build_index, load_index, save_index
from trime.core.mixtures import (RetrievedMemory, cache_log_probs, knnlm_log_probs,
                                 memory_log_probs)
from trime.core.visibility import LocalMemory
from trime.extmem.retrieval import Retriever

V, D, K = 13, 8, 6


def _retrieved(G, T, seed=0, empty_rows=()):
    """Random retrieved entries with repeated labels; some entries missing (-inf)."""
    gen = torch.Generator().manual_seed(seed)
    sims = torch.randn(G, T, K, generator=gen) * 2
    labels = torch.randint(4, 9, (G, T, K), generator=gen)  # few words: many duplicates
    sims[0, 1, 2:] = float("-inf")
    for g, t in empty_rows:
        sims[g, t] = float("-inf")
    return RetrievedMemory(sims, labels)


@pytest.mark.parametrize("lam,temp", [(0.25, 1.0), (0.6, 3.0), (0.0, 1.0)])
def test_knnlm_matches_naive_and_sums_to_one(lam, temp):
    torch.manual_seed(1)
    scores = torch.randn(2, 5, V) * 3
    retrieved = _retrieved(2, 5, empty_rows=[(1, 3)])
    ours = knnlm_log_probs(scores, retrieved, lam, temp)
    for g in range(2):
        for t in range(5):
            ref = knnlm_distribution(scores[g, t], retrieved.sims[g, t], retrieved.labels[g, t],
                                     lam, temp)
            assert torch.allclose(ours[g, t].double().exp(), ref, atol=1e-6)
    assert torch.allclose(ours.double().exp().sum(-1), torch.ones(2, 5, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("local", [True, False], ids=["local+ext", "ext-only"])
@pytest.mark.parametrize("lam,interp_span", [(0.0, True), (0.4, True), (0.4, False)],
                         ids=["eq6", "eq9-M_eval", "eq9-retrieved"])
@pytest.mark.parametrize("chunk_size", [2, 512])
def test_trime_ext_matches_naive_and_sums_to_one(local, lam, interp_span, chunk_size):
    torch.manual_seed(2)
    G, T = 2, 7
    scores = torch.randn(G, T, V) * 2
    g = torch.randn(G, T, D)
    labels = torch.randint(4, 10, (G, T))
    valid = torch.ones(G, T, dtype=torch.bool)
    valid[1, 5:] = False
    retrieved = _retrieved(G, T, seed=3, empty_rows=[(0, 0)])
    tau, tau_prime = 1.3, 2.5
    ours = memory_log_probs(scores, g, g, labels, LocalMemory(valid) if local else None, tau,
                            chunk_size=chunk_size, retrieved=retrieved, interp_lambda=lam,
                            interp_temperature=tau_prime, interp_span=interp_span)
    for b in range(G):
        for t in range(T):
            memory = [j for j in range(t) if valid[b, j]] if local else []
            ref = trime_ext_distribution(scores[b, t], g[b, t], g[b], labels[b], memory,
                                         retrieved.sims[b, t], retrieved.labels[b, t], tau, lam,
                                         tau_prime, interp_span)
            assert torch.allclose(ours[b, t].double().exp(), ref, atol=1e-6), (b, t)
    assert torch.allclose(ours.double().exp().sum(-1), torch.ones(G, T, dtype=torch.float64), atol=1e-6)


def test_local_eq9_without_retrieval_matches_naive():
    """Eq. 9 over span memory only (no datastore): the same code path, naive reference with no
    retrieved entries."""
    torch.manual_seed(4)
    scores, g = torch.randn(1, 6, V), torch.randn(1, 6, D)
    labels = torch.randint(4, 10, (1, 6))
    valid = torch.ones(1, 6, dtype=torch.bool)
    ours = memory_log_probs(scores, g, g, labels, LocalMemory(valid), 0.9, interp_lambda=0.3,
                            interp_temperature=2.0)
    none = torch.full((0,), float("-inf"))
    for t in range(6):
        ref = trime_ext_distribution(scores[0, t], g[0, t], g[0], labels[0], list(range(t)), none,
                                     none.long(), 0.9, 0.3, 2.0)
        assert torch.allclose(ours[0, t].double().exp(), ref, atol=1e-6)


# ---------------------------------------------------------------- datastore + FAISS

def _write_datastore(path, keys, values, order=None, dictionary_size=20):
    meta = {"dictionary_size": dictionary_size, "dictionary_checksum": "x", "split": "valid"}
    writer = DatastoreWriter(str(path), len(keys), keys.shape[1], meta, progress=False)
    order = np.arange(len(keys)) if order is None else order
    for chunk in np.array_split(order, 4):
        rows = torch.from_numpy(chunk)
        writer.add(rows, keys[rows], values[rows])
    assert writer.complete
    return Datastore.open(str(path))


@pytest.fixture
def store(tmp_path):
    gen = torch.Generator().manual_seed(5)
    keys = torch.randn(300, D, generator=gen).half().float()  # representable in fp16
    values = torch.randint(4, 20, (300,), generator=gen)
    order = np.random.default_rng(0).permutation(300)  # rows arrive in any order
    return _write_datastore(tmp_path / "dstore", keys, values, order), keys, values


def test_datastore_rows_hold_what_was_added(store):
    datastore, keys, values = store
    assert np.array_equal(np.asarray(datastore.keys, dtype=np.float32), keys.numpy())
    assert np.array_equal(np.asarray(datastore.values), values.numpy())
    assert datastore.values.dtype == np.int32 and datastore.keys.dtype == np.float16
    meta = json.load(open(os.path.join(datastore.path, "meta.json")))
    assert meta["num_tokens"] == 300 and meta["dim"] == D and meta["key_type"] == "last-ffn-input"


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_index_retrieval_equals_brute_force(store, metric):
    datastore, keys, values = store
    index, info = build_index(datastore, metric, "flat", progress=False)
    save_index(index, info, datastore.path)
    retriever = Retriever(datastore, load_index(datastore, metric), k=K, similarity=metric)
    queries = torch.randn(9, D, generator=torch.Generator().manual_seed(6))
    found = retriever.search(queries)
    ref_sims, ref_rows = brute_force_knn(queries, keys, K, metric)
    if metric == "ip":
        ref_sims = ref_sims / math.sqrt(D)
    assert torch.allclose(found.sims.double(), ref_sims, atol=1e-4)
    assert torch.equal(found.labels, values[ref_rows])
    # a query's own row is excluded: the next best entry takes its place
    own = ref_rows[:, 0]
    found = retriever.search(queries, exclude_rows=own)
    ref_sims2, ref_rows2 = brute_force_knn(queries, keys, K + 1, metric)
    assert torch.equal(found.labels, values[ref_rows2[:, 1:]])


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_torch_search_equals_the_flat_index_and_needs_no_index(store, metric, monkeypatch):
    from trime.extmem import torch_search
    from trime.extmem.retrieval import open_retriever

    datastore, keys, values = store
    index, info = build_index(datastore, metric, "flat", progress=False)
    save_index(index, info, datastore.path)
    queries = torch.randn(9, D, generator=torch.Generator().manual_seed(6))
    flat = Retriever(datastore, load_index(datastore, metric), k=K, similarity=metric, device="cpu")
    monkeypatch.setattr(torch_search, "SCORES_PER_BLOCK", 9 * 64)  # 5 key blocks: merged top-k
    exact = Retriever(datastore, None, k=K, similarity=metric, device="torch")
    for exclude in (None, torch.arange(9) * 7):
        ours, ref = exact.search(queries, exclude), flat.search(queries, exclude)
        assert exact.backend == "torch" and flat.backend == "cpu"
        assert torch.allclose(ours.sims, ref.sims, atol=1e-4) and torch.equal(ours.labels, ref.labels)
    assert len(exact.index.search(queries, 1000)[1][0]) == 300  # k capped at the datastore
    for name in os.listdir(datastore.path):
        if name.startswith("index."):
            os.remove(os.path.join(datastore.path, name))
    assert open_retriever(datastore, K, metric, 8, device="torch").search(queries).labels.shape == (9, K)
    with pytest.raises(FileNotFoundError, match="trime-build-index"):
        open_retriever(datastore, K, metric, 8, device="auto")
    with pytest.raises(ValueError, match="--knn-device faiss-gpu needs CUDA queries and faiss-gpu"):
        Retriever(datastore, flat.index, K, metric, device="faiss-gpu").search(queries)


def test_ivfpq_exact_scores_rescore_the_retrieved_keys(store):
    datastore, keys, values = store
    index, info = build_index(datastore, "ip", "ivfpq", nlist=4, num_sub=4, nbits=4,
                              progress=False)
    assert info["index_type"] == "ivfpq" and index.ntotal == 300
    save_index(index, info, datastore.path)
    queries = torch.randn(5, D, generator=torch.Generator().manual_seed(7))
    approx = Retriever(datastore, load_index(datastore, "ip", nprobe=4), K, "ip").search(queries)
    exact = Retriever(datastore, load_index(datastore, "ip", nprobe=4), K, "ip",
                      exact_scores=True).search(queries)
    # every exact similarity is the true g·g'/√d of some stored key with that label
    true = queries @ keys.t() / math.sqrt(D)
    for q in range(5):
        for s, w in zip(exact.sims[q].tolist(), exact.labels[q].tolist()):
            rows = torch.nonzero(torch.isclose(true[q], torch.tensor(s), atol=1e-4)).flatten()
            assert any(int(values[r]) == w for r in rows)
    assert not torch.allclose(approx.sims, exact.sims, atol=1e-3)  # PQ distances are approximate
    assert torch.all(exact.sims[:, :-1] >= exact.sims[:, 1:])  # sorted by exact similarity


# ---------------------------------------------------------------- bad input

def test_an_interrupted_index_build_resumes_where_it_stopped(store, monkeypatch, caplog):
    """IVFPQ built with stages kept: killed after its first checkpoint of added keys, the same
    build started again continues from it and gives the index it would have given."""
    import faiss

    import trime.extmem.index as index_module

    datastore, _, _ = store
    settings = dict(metric="ip", index_type="ivfpq", nlist=4, num_sub=4, nbits=4, add_chunk=50,
                    progress=False, resume=True, checkpoint_keys=100)
    write_stage, saved = index_module._write_stage, []

    def killed_after_first_checkpoint(index, on_gpu, path, identity):
        write_stage(index, on_gpu, path, identity)
        saved.append((path, faiss.serialize_index(index)))
        if path.endswith(".partial"):
            raise KeyboardInterrupt

    monkeypatch.setattr(index_module, "_write_stage", killed_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        build_index(datastore, **settings)
    assert [os.path.basename(p) for p, _ in saved] == ["index.ip.faiss.trained", "index.ip.faiss.partial"]
    assert faiss.deserialize_index(saved[1][1]).ntotal == 100
    monkeypatch.setattr(index_module, "_write_stage", write_stage)
    with caplog.at_level("INFO", logger="trime.extmem.index"):
        resumed, info = build_index(datastore, **settings)
    assert "100 keys already added" in caplog.text
    expected = faiss.deserialize_index(saved[0][1])  # the trained stage, every key added
    for start in range(0, len(datastore), 50):
        expected.add(np.asarray(datastore.keys[start:start + 50], dtype=np.float32))
    assert np.array_equal(faiss.serialize_index(resumed), faiss.serialize_index(expected))
    save_index(resumed, info, datastore.path)  # the stages are removed with the final index
    assert sorted(f for f in os.listdir(datastore.path) if f.startswith("index")) == \
        ["index.ip.faiss", "index.ip.json"]


def test_interrupted_build_is_never_loaded(tmp_path):
    keys, values = torch.randn(10, D), torch.randint(4, 9, (10,))
    writer = DatastoreWriter(str(tmp_path / "d"), 10, D, {"dictionary_size": 9,
                                                         "dictionary_checksum": "x"}, progress=False)
    writer.add(torch.arange(6), keys[:6], values[:6])
    assert not writer.complete and not os.path.exists(tmp_path / "d")
    with pytest.raises(ValueError, match="incomplete.*interrupted"):
        Datastore.open(str(tmp_path / "d"))
    with pytest.raises(RuntimeError, match="scored twice"):
        writer.add(torch.tensor([5, 6]), keys[5:7], values[5:7])
    with pytest.raises(ValueError, match="outside"):
        writer.add(torch.tensor([10]), keys[:1], values[:1])


def test_a_datastore_that_does_not_fit_on_the_disk_is_refused_before_writing(tmp_path, monkeypatch):
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**6, 10**6))
    with pytest.raises(OSError, match=r"a datastore of 100,000 rows needs 0\.\d+ GiB .* free some "
                                      "space or choose another folder"):
        DatastoreWriter(str(tmp_path / "d"), 100_000, D, {}, progress=False)
    assert os.listdir(tmp_path) == []  # nothing started, so nothing half-written
    monkeypatch.undo()
    DatastoreWriter(str(tmp_path / "d"), 100_000, D, {}, progress=False)  # fits


def test_a_split_that_does_not_fit_on_the_disk_is_refused_before_writing(tmp_path, monkeypatch):
    import collections
    import shutil
    import zipfile

    from console import run

    with zipfile.ZipFile(tmp_path / "enwik8.zip", "w") as archive:
        archive.writestr("enwik8", bytes(range(256)) * 200)
    usage = collections.namedtuple("usage", "total used free")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**4, 10**4))
    code, output = run("trime-prepare-enwik8", tmp_path / "out", "--archive", tmp_path / "enwik8.zip",
                       "--held-out-bytes", 5000, check=False)
    assert code != 0 and "free some space or choose another folder" in output
    assert not os.path.exists(tmp_path / "out" / "raw" / "train.txt")
    monkeypatch.setattr(shutil, "disk_usage", real)


def test_existing_datastore_is_not_overwritten(store):
    datastore, keys, values = store
    with pytest.raises(FileExistsError, match="already exists"):
        DatastoreWriter(datastore.path, 3, D, {}, progress=False)


def test_truncated_memmap_is_refused(store):
    datastore, _, _ = store
    path = os.path.join(datastore.path, "keys.npy")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(ValueError, match="damaged.*truncated"):
        Datastore.open(datastore.path)


def test_dictionary_and_dimension_mismatch_are_refused(store):
    from fairseq.data import Dictionary

    datastore, _, _ = store
    with pytest.raises(ValueError, match="another dictionary"):
        Datastore.open(datastore.path, dictionary=Dictionary())
    with pytest.raises(ValueError, match="dimension 8, this model's g\\(c\\) has dimension 16"):
        Datastore.open(datastore.path, dim=16)


def test_missing_untrained_or_stale_index_and_large_k_are_refused(store, tmp_path):
    import faiss

    datastore, keys, values = store
    with pytest.raises(FileNotFoundError, match="trime-build-index .* --metric l2"):
        load_index(datastore, "l2")
    quantizer = faiss.IndexFlatL2(D)
    untrained = faiss.IndexIVFFlat(quantizer, D, 4, faiss.METRIC_L2)
    save_index(untrained, {"metric": "l2"}, datastore.path)
    with pytest.raises(ValueError, match="not trained"):
        load_index(datastore, "l2")
    small = faiss.IndexFlatIP(D)
    small.add(keys[:10].numpy())
    save_index(small, {"metric": "ip"}, datastore.path)
    with pytest.raises(ValueError, match="another datastore"):
        load_index(datastore, "ip")
    with pytest.raises(ValueError, match="cannot retrieve 301 entries from a datastore of 300"):
        Retriever(datastore, small, 301)


# ---------------------------------------------------------------- trime-tune statistics

@pytest.mark.parametrize("lam,interp_memory", [(0.0, "eval"), (0.35, "eval"), (0.35, "ext")])
@pytest.mark.parametrize("local", [True, False], ids=["local+ext", "ext-only"])
def test_tuning_statistics_give_the_full_distribution_at_the_target(lam, interp_memory, local):
    """trime-tune scores a grid from per-token statistics; they must give exactly what the full
    distribution (memory_log_probs / knnlm_log_probs) gives at the target."""
    from trime.core.target_stats import memory_target_stats

    torch.manual_seed(8)
    G, T = 2, 7
    scores, g = torch.randn(G, T, V) * 2, torch.randn(G, T, D)
    labels = torch.randint(4, 10, (G, T))
    targets = labels.clone()
    visibility = LocalMemory(torch.ones(G, T, dtype=torch.bool)) if local else None
    retrieved = _retrieved(G, T, seed=9, empty_rows=[(1, 2)])
    temps = [0.7, 1.3, 2.5]
    stats = memory_target_stats(scores.gather(-1, targets[..., None])[..., 0], scores.logsumexp(-1),
                                g, g, labels, visibility, targets, temps, retrieved, chunk_size=3)
    for tau, tau_prime in ((1.3, 2.5), (0.7, 0.7)):
        full = memory_log_probs(scores, g, g, labels, visibility, tau, retrieved=retrieved,
                                interp_lambda=lam, interp_temperature=tau_prime,
                                interp_span=interp_memory == "eval")
        ours = stats.target_log_prob("trime", tau, lam, tau_prime, interp_memory)
        assert torch.allclose(ours, full.gather(-1, targets[..., None])[..., 0], atol=1e-5)
    knn = knnlm_log_probs(scores, retrieved, 0.3, 2.5).gather(-1, targets[..., None])[..., 0]
    assert torch.allclose(stats.target_log_prob("knnlm", lam=0.3, interp_temperature=2.5), knn,
                          atol=1e-5)


@pytest.mark.parametrize("options,message", [
    (dict(eval_memory="local,ext"), "needs --dstore DIR"),
    (dict(eval_memory="local", dstore="d"), "--dstore is only used with external memory"),
    (dict(eval_memory="local,long", eval_scoring="knnlm"), "use --eval-memory ext"),
    (dict(eval_memory="ext", dstore="d", eval_scoring="cache"), "use --eval-scoring knnlm"),
    (dict(eval_memory="ext", dstore="d", knn_lambda=1.0), "--knn-lambda must be in"),
    (dict(eval_memory="ext", dstore="d", knn_temp=0.0), "--knn-temp must be > 0"),
    (dict(eval_memory="local", knn_temp=2.0), "apply to external memory only"),
    (dict(eval_memory="ext", dstore="d", knn_k=0), "--knn-k and --knn-nprobe must be >= 1"),
])
def test_bad_external_memory_settings(options, message):
    from trime.settings import EvalSettings

    with pytest.raises(ValueError, match=message):
        EvalSettings(**options)


def test_external_memory_defaults_follow_the_scoring():
    from trime.settings import EvalSettings

    knn = EvalSettings(eval_memory="ext", dstore="d", eval_scoring="knnlm")
    assert (knn.knn_sim, knn.knn_lambda, knn.knn_temp) == ("l2", 0.25, 1.0)
    trime = EvalSettings(eval_memory="local,long,ext", dstore="d")
    assert (trime.knn_sim, trime.knn_lambda, trime.knn_temp) == ("ip", 0.3, 1.0)


def test_tuning_statistics_keep_positives_far_below_the_strongest_entry():
    """A positive entry e^-200 below the strongest memory entry still counts (no underflow)."""
    from trime.core.target_stats import memory_target_stats

    sims = torch.tensor([[[200.0, 0.0, float("-inf")]]])
    labels = torch.tensor([[[5, 7, 7]]])
    stats = memory_target_stats(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1, D),
                                torch.zeros(1, 1, D), torch.zeros(1, 1, dtype=torch.long), None,
                                torch.tensor([[7]]), [1.0, 2.0], RetrievedMemory(sims, labels),
                                sets=("ext",))
    assert stats.memory_lse("ext", 1.0, positive=True)[0, 0] == 0.0  # log exp(0)
    assert stats.memory_lse("ext", 2.0, positive=True)[0, 0] == 0.0
    assert torch.isclose(stats.memory_lse("ext", 2.0)[0, 0], torch.tensor(100.0))
    with pytest.raises(KeyError, match="not computed"):  # not asked for
        stats.memory_lse("eval", 1.0)


def test_target_stats_at_cache_magnitudes_equal_a_float64_sum():
    """Similarities of hundreds (the cache's raw h·h_j) at t from 1/4 to 100: most exp terms fall
    below float32's normal range, where the exponent is floored; every log-sum-exp still equals
    the explicit float64 one, a query with no visible entry gets -inf, one with no entry labelled
    w* gets -inf for the positive sum only."""
    from trime.core.target_stats import memory_target_stats

    gen = torch.Generator().manual_seed(0)
    K, Q = 40, 6
    sims = torch.randn(1, Q, K, generator=gen) * 300
    sims[0, 0] = float("-inf")  # nothing visible
    sims[0, 1, ::2] = float("-inf")  # half visible
    labels = torch.randint(0, 5, (1, Q, K), generator=gen)
    targets = torch.randint(0, 5, (1, Q), generator=gen)
    labels[0, 2] = (targets[0, 2] + 1) % 5  # no entry labelled w*
    temperatures = [0.25, 1.0, 10.0, 100.0]
    stats = memory_target_stats(torch.zeros(1, Q), torch.zeros(1, Q), torch.zeros(1, Q, D),
                                torch.zeros(1, Q, D), torch.zeros(1, Q, dtype=torch.long), None,
                                targets, temperatures, RetrievedMemory(sims, labels), sets=("ext",))
    for i, t in enumerate(temperatures):
        for q in range(Q):
            scaled = sims[0, q].double() / t
            positive = labels[0, q] == targets[0, q]
            for got, expected in ((stats.lse_all["ext"][0, q, i], torch.logsumexp(scaled, 0)),
                                  (stats.lse_pos["ext"][0, q, i], torch.logsumexp(scaled[positive], 0)
                                   if positive.any() else torch.tensor(float("-inf")))):
                if torch.isinf(expected):
                    assert got == expected, (t, q)
                else:
                    assert abs(float(got) - float(expected)) <= 1e-6 * max(1.0, abs(float(expected))), (t, q)
    assert torch.isneginf(stats.lse_all["ext"][0, 0]).all() and torch.isneginf(stats.lse_pos["ext"][0, 2]).all()


# ---------------------------------------------------------------- kNN-LM + continuous cache

def _naive_knnlm_cache(scores, retrieved, lam, temp, h, labels, visible, cache_lambda, theta):
    """(1-λ_c)[(1-λ) p_LM + λ p_kNN] + λ_c p_cache, word by word; p_cache over the visible keys."""
    G, T, _ = scores.shape
    out = torch.zeros(G, T, V, dtype=torch.float64)
    for g in range(G):
        for t in range(T):
            p = knnlm_distribution(scores[g, t], retrieved.sims[g, t], retrieved.labels[g, t], lam, temp)
            memory = [j for j in range(T) if visible[g][t][j]]
            if memory and cache_lambda > 0:
                cache = torch.zeros(V, dtype=torch.float64)
                for j in memory:
                    cache[int(labels[g, j])] += torch.exp(theta * torch.dot(h[g, t].double(),
                                                                           h[g, j].double()))
                p = (1 - cache_lambda) * p + cache_lambda * cache / cache.sum()
            out[g, t] = p
    return out


@pytest.mark.parametrize("cache_lambda,theta", [(0.3, 0.5), (0.0, 0.5), (0.6, 2.0)])
def test_knnlm_with_cache_matches_naive_sums_to_one_and_tunes_from_statistics(cache_lambda, theta):
    from trime.core.mixtures import knnlm_cache_log_probs
    from trime.core.target_stats import CACHE_SET, memory_target_stats

    torch.manual_seed(4)
    G, T, lam, temp = 2, 7, 0.35, 2.0
    scores, g, h = torch.randn(G, T, V) * 2, torch.randn(G, T, D), torch.randn(G, T, D) * 0.5
    labels = torch.randint(4, 9, (G, T))
    key_valid = torch.ones(G, T, dtype=torch.bool)
    key_valid[1, 3] = False  # a key without a real label is never visible
    visibility = LocalMemory(key_valid)
    retrieved = _retrieved(G, T, seed=6, empty_rows=[(1, 4)])
    ours = knnlm_cache_log_probs(scores, retrieved, lam, temp, h, h, labels, visibility,
                                 cache_lambda, theta, chunk_size=3)
    visible = visibility.visible(0, T, 0, T).expand(G, T, T).tolist()
    ref = _naive_knnlm_cache(scores, retrieved, lam, temp, h, labels, visible, cache_lambda, theta)
    assert torch.allclose(ours.double(), ref.log(), atol=1e-5)
    assert torch.allclose(ours.double().exp().sum(-1), torch.ones(G, T, dtype=torch.float64), atol=1e-5)
    if cache_lambda == 0:  # exactly the kNN-LM
        assert torch.equal(ours, knnlm_log_probs(scores, retrieved, lam, temp))
    # the statistics trime-tune and fairseq-eval-lm read give the same at the target
    targets = labels.clone()
    temps = sorted({temp, 1.0 / theta, 1.0})
    stats = memory_target_stats(scores.gather(-1, targets[..., None])[..., 0], scores.logsumexp(-1),
                                g, g, labels, visibility, targets, temps, retrieved,
                                sets=("ext", CACHE_SET), chunk_size=3, cache_queries=h, cache_keys=h)
    at_target = stats.target_log_prob("knnlm", lam=lam, interp_temperature=temp,
                                      cache_lambda=cache_lambda, cache_theta=theta)
    assert torch.allclose(at_target, ours.gather(-1, targets[..., None])[..., 0], atol=1e-5)
    cache_only = cache_log_probs(scores, h, h, labels, visibility, cache_lambda, theta, chunk_size=3)
    assert torch.allclose(stats.target_log_prob("cache", cache_lambda=cache_lambda, cache_theta=theta),
                          cache_only.gather(-1, targets[..., None])[..., 0], atol=1e-5)
    with pytest.raises(ValueError, match="kNN-LM or cache scoring only"):
        stats.target_log_prob("trime", cache_lambda=0.3, cache_theta=theta)


def test_knnlm_with_cache_settings():
    from trime.settings import EvalSettings

    both = EvalSettings(eval_memory="local,long,ext", dstore="d", eval_scoring="knnlm")
    assert both.uses_cache and "continuous cache lambda = 0.1" in both.describe()
    assert not EvalSettings(eval_memory="ext", dstore="d", eval_scoring="knnlm").uses_cache
    with pytest.raises(ValueError, match="--cache-lambda must be in"):
        EvalSettings(eval_memory="local,ext", dstore="d", eval_scoring="knnlm", cache_lambda=1.0)
    with pytest.raises(ValueError, match="or local,ext / local,long,ext for kNN-LM \\+ continuous cache"):
        EvalSettings(eval_memory="local", eval_scoring="knnlm")
