"""trime.hf.evaluation.evaluate: perplexity with local memory, long memory (a FIFO across
segments and batches) and the continuous cache equals the naive Eq. 6 / cache distributions built
word by word (tests/naive.py) from the same model's per-segment outputs."""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from naive import cache_distribution, eq6_distribution, fifo_stream_memory  # noqa: E402
from test_hf_loss import TINY, tiny_model  # noqa: E402
from trime.hf.data import Segments  # noqa: E402
from trime.hf.evaluation import evaluate  # noqa: E402
from trime.settings import EvalSettings  # noqa: E402

L = 6
D_MODEL = 16  # the tiny models' width (test_hf_loss.D)


def corpus():
    rng = np.random.default_rng(11)
    return Segments([rng.integers(3, 23, size=n).tolist() for n in (20, 9, 16)], length=L)


@torch.no_grad()
def per_segment_outputs(model, segments):
    """(logits, g, final, targets, docs, starts) of each segment, one forward pass each."""
    out = []
    for i in range(len(segments)):
        item = segments[i]
        captured = {}
        handle = model.get_submodule(TINY["gpt2"][1]).register_forward_pre_hook(
            lambda m, inputs: captured.update(g=inputs[0]))
        result = model(input_ids=item["input_ids"][None], output_hidden_states=True)
        handle.remove()
        out.append(dict(logits=result.logits[0, :-1], g=captured["g"][0, :-1],
                        final=result.hidden_states[-1][0, :-1], targets=item["input_ids"][1:].tolist(),
                        docs=item["doc_ids"][1:].tolist(), start=item["segment_start"] + 1))
    return out


def naive_perplexity(rows, memory_of, distribution):
    total = count = 0
    for s, row in enumerate(rows):
        for t, target in enumerate(row["targets"]):
            keys, labels = memory_of(s, t)
            p = distribution(row, t, keys, labels)
            total -= math.log(float(p[target]))
            count += 1
    return math.exp(total / count), count


def local_memory_of(rows, key):
    def memory_of(s, t):
        return [rows[s][key][j] for j in range(t)], [rows[s]["targets"][j] for j in range(t)]
    return memory_of


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_local_memory_equals_naive_eq6(tau):
    model, segments = tiny_model("gpt2"), corpus()
    rows = per_segment_outputs(model, segments)

    def eq6(row, t, keys, labels):
        memory = list(range(len(keys)))
        return eq6_distribution(row["logits"][t], row["g"][t], torch.stack(keys) if keys else row["g"][:0],
                                labels, memory, tau)

    expected, count = naive_perplexity(rows, local_memory_of(rows, "g"), eq6)
    result = evaluate(model, segments, EvalSettings(eval_memory="local", memory_temp=tau), batch_size=2)
    assert result["tokens"] == count == len(segments.stream) - 1
    assert result["perplexity"] == pytest.approx(expected, rel=1e-6)


def test_long_memory_fifo_across_batches_equals_naive():
    model, segments = tiny_model("gpt2"), corpus()
    rows = per_segment_outputs(model, segments)
    size = 7
    windows = [dict(window_start=row["start"], labels=row["targets"], valid=[True] * len(row["targets"]),
                    scored=[True] * len(row["targets"]), docs=row["docs"]) for row in rows]
    memory, history = fifo_stream_memory(windows, size, reset=True)

    def memory_of(s, t):
        keys, labels = [], []
        for kind, index in memory[s][t]:
            r, j = (history[index][3], history[index][4]) if kind == "history" else (s, index)
            keys.append(rows[r]["g"][j])
            labels.append(rows[r]["targets"][j])
        return keys, labels

    def eq6(row, t, keys, labels):
        return eq6_distribution(row["logits"][t], row["g"][t], torch.stack(keys) if keys else row["g"][:0],
                                labels, list(range(len(keys))))

    expected, _ = naive_perplexity(rows, memory_of, eq6)
    settings = EvalSettings(eval_memory="local,long", long_memory_size=size)
    assert evaluate(model, segments, settings, batch_size=2)["perplexity"] == pytest.approx(expected, rel=1e-6)
    local = evaluate(model, segments, EvalSettings(eval_memory="local"), batch_size=2)["perplexity"]
    assert local != pytest.approx(expected, rel=1e-6)  # the FIFO made a difference


@pytest.mark.parametrize("cache_key", ["final", "last-ffn-input"])
def test_continuous_cache_equals_naive(cache_key):
    model, segments = tiny_model("gpt2"), corpus()
    rows = per_segment_outputs(model, segments)
    lam, theta = 0.3, 0.5
    key = "final" if cache_key == "final" else "g"

    def cache(row, t, keys, labels):
        return cache_distribution(row["logits"][t], row[key][t], keys, labels, list(range(len(keys))),
                                  lam, theta)

    expected, _ = naive_perplexity(rows, local_memory_of(rows, key), cache)
    settings = EvalSettings(eval_memory="local", eval_scoring="cache", cache_lambda=lam,
                            cache_theta=theta, cache_key=cache_key)
    assert evaluate(model, segments, settings, batch_size=3)["perplexity"] == pytest.approx(expected, rel=1e-6)


@torch.no_grad()
def test_no_memory_is_transformers_own_perplexity():
    model, segments = tiny_model("gpt2"), corpus()
    losses = [model(input_ids=segments[i]["input_ids"][None], labels=segments[i]["input_ids"][None]).loss
              * (len(segments[i]["input_ids"]) - 1) for i in range(len(segments))]
    expected = math.exp(float(sum(losses)) / (len(segments.stream) - 1))
    assert evaluate(model, segments, EvalSettings(eval_memory="none"))["perplexity"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("scoring, metric", [("trime", "ip"), ("knnlm", "l2")])
def test_external_memory_from_a_saved_datastore_equals_naive(tmp_path, scoring, metric):
    """A datastore of the train segments (save_datastore), an exact FAISS index, then TrimeLM_ext
    (local + ext, Eq. 6-9) or kNN-LM scoring of other segments: equal to the naive distributions
    over brute-force neighbours; scoring the train split itself leaves each token's own entry out."""
    from naive import brute_force_knn, knnlm_distribution, trime_ext_distribution

    from trime.extmem.datastore import Datastore
    from trime.extmem.index import build_index, save_index
    from trime.extmem.retrieval import open_retriever
    from trime.hf.evaluation import Vocabulary, save_datastore

    model = tiny_model("gpt2")
    rng = np.random.default_rng(5)
    train = Segments([rng.integers(3, 23, size=n).tolist() for n in (30, 25)], length=L)
    save_datastore(model, train, tmp_path / "dstore", batch_size=3)
    datastore = Datastore.open(str(tmp_path / "dstore"), Vocabulary(model), D_MODEL)
    assert len(datastore) == len(train.stream) - 1
    assert np.array_equal(np.asarray(datastore.values), train.stream[1:])
    save_index(*build_index(datastore, metric, "flat", progress=False), datastore.path)
    K, lam, tau_prime = 4, 0.4, 2.0
    retriever = open_retriever(Datastore.open(str(tmp_path / "dstore"), Vocabulary(model), D_MODEL),
                               K, metric, 1, device="cpu")
    keys = torch.from_numpy(np.asarray(datastore.keys, dtype=np.float64))
    values = train.stream[1:]
    segments = corpus()
    memory = "local,ext" if scoring == "trime" else "ext"
    settings = EvalSettings(eval_memory=memory, eval_scoring=scoring, dstore=str(tmp_path / "dstore"),
                            knn_k=K, knn_sim=metric, knn_lambda=lam, knn_temp=tau_prime)

    def naive(split, exclude_own):
        rows = per_segment_outputs(model, split)

        def distribution(row, t, local_keys, labels):
            query = row["g"][t].double()
            own_row = row["start"] - 1 + t  # the datastore row of this very target
            # the neighbours of the query among the datastore's fp16 keys (its own left out)
            sims, found = brute_force_knn(query[None], keys, K + 1, metric)
            kept = [i for i, r in enumerate(found[0].tolist()) if not (exclude_own and r == own_row)][:K]
            sims, found = sims[0][kept], found[0][kept]
            sims = sims / math.sqrt(query.shape[-1]) if metric == "ip" else sims
            found_labels = torch.from_numpy(values[found.numpy()])
            if scoring == "knnlm":
                return knnlm_distribution(row["logits"][t], sims, found_labels, lam, tau_prime)
            return trime_ext_distribution(row["logits"][t], row["g"][t],
                                          torch.stack(local_keys) if local_keys else row["g"][:0],
                                          labels, list(range(len(local_keys))), sims, found_labels,
                                          1.0, lam, tau_prime)

        return naive_perplexity(rows, local_memory_of(rows, "g"), distribution)[0]

    result = evaluate(model, segments, settings, retriever, batch_size=2)
    assert result["perplexity"] == pytest.approx(naive(segments, False), rel=1e-5)
    own = evaluate(model, train, settings, retriever, batch_size=2)["perplexity"]
    assert own == pytest.approx(naive(train, True), rel=1e-5)  # no token retrieves itself
    assert own != pytest.approx(naive(train, False), rel=1e-5)
