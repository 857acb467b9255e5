"""Evaluation-time long memory (FIFO, §4.2) and the continuous cache vs explicit loops."""

import pytest
import torch

from naive import cache_distribution, eq6_distribution, fifo_stream_memory
from trime.core.mixtures import cache_log_probs, memory_log_probs
from trime.core.fifo import FifoMemory
from trime.core.fifo import score_with_long_memory

PAD = 1
V, D = 9, 4


def _stream(num_rows=5, T=6, context=3, doc_starts=(0, 13), seed=0):
    """Rows like LMContextWindowDataset makes: `context` positions of context, then T scored.

    Label offsets of row i: [i*T - c_i, i*T + T); the first row has no context.
    """
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(num_rows):
        c = min(context, i * T)
        width = context + T
        start = i * T - c
        offsets = torch.arange(start, start + width)
        scored = torch.zeros(width, dtype=torch.bool)
        scored[c:c + T] = True
        valid = torch.zeros(width, dtype=torch.bool)
        valid[:c + T] = True
        labels = torch.randint(2, V, (width,), generator=gen)
        labels[~valid] = PAD
        docs = torch.searchsorted(torch.tensor(doc_starts), offsets, right=True) - 1
        rows.append(dict(offsets=offsets, scored=scored, valid=valid, labels=labels, docs=docs,
                         scores=torch.randn(width, V, generator=gen, dtype=torch.float64),
                         keys=torch.randn(width, D, generator=gen, dtype=torch.float64)))
    return rows


def _ours(rows, batch_rows, size, reset, combine):
    fifo = FifoMemory(size, reset_at_documents=reset)
    outs = []
    for b0 in range(0, len(rows), batch_rows):
        batch = rows[b0:b0 + batch_rows][::-1]  # out of order inside a batch: sorted by the scorer
        stack = {k: torch.stack([r[k] for r in batch]) for k in batch[0]}
        out = score_with_long_memory(stack["scores"], stack["keys"], stack["labels"], stack["valid"],
                                     stack["scored"], stack["offsets"], stack["docs"], fifo, combine)
        outs += [row[0] for row in out][::-1]  # one [1, T, ...] result per row, in batch order
    return outs, fifo


def _naive(rows, size, reset, distribution):
    naive_rows = [dict(window_start=int(r["offsets"][0]), labels=r["labels"].tolist(),
                       valid=r["valid"].tolist(), scored=r["scored"].tolist(), docs=r["docs"].tolist())
                  for r in rows]
    memory, history = fifo_stream_memory(naive_rows, size, reset)
    result = []
    for i, r in enumerate(rows):
        log_p = torch.zeros(len(r["labels"]), V, dtype=torch.float64)
        for t in range(len(r["labels"])):
            keys, labels = [], []
            for kind, j in memory[i][t]:
                if kind == "window":
                    keys.append(r["keys"][j]), labels.append(int(r["labels"][j]))
                else:
                    _, label, _, row, pos = history[j]
                    keys.append(rows[row]["keys"][pos]), labels.append(label)
            keys = torch.stack(keys) if keys else torch.zeros(0, D, dtype=torch.float64)
            log_p[t] = distribution(r["scores"][t], r["keys"][t], keys, labels,
                                    list(range(len(labels)))).log()
        result.append(log_p)
    return result, history


@pytest.mark.parametrize("size", [0, 4, 10, 100])
@pytest.mark.parametrize("reset", [True, False], ids=["reset", "no-reset"])
@pytest.mark.parametrize("batch_rows", [1, 2])
def test_long_memory_eq6_matches_explicit_loops(size, reset, batch_rows):
    rows = _stream()
    tau = 1.3

    def combine(rows, scores, queries, keys, labels, visibility):
        return memory_log_probs(scores, queries, keys, labels, visibility, tau, chunk_size=4)

    ours, _ = _ours(rows, batch_rows, size, reset, combine)
    ref, _ = _naive(rows, size, reset, lambda s, q, k, l, m: eq6_distribution(s, q, k, l, m, tau))
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert torch.allclose(a.double()[rows[i]["valid"]], b[rows[i]["valid"]], atol=1e-5), i


def test_continuous_cache_matches_explicit_loops():
    rows = _stream(seed=1)
    lam, theta = 0.3, 0.7

    def combine(rows, scores, queries, keys, labels, visibility):
        return cache_log_probs(scores, queries, keys, labels, visibility, lam, theta, chunk_size=4)

    ours, _ = _ours(rows, 2, 8, True, combine)
    ref, _ = _naive(rows, 8, True,
                    lambda s, q, k, l, m: cache_distribution(s, q, k, l, m, lam, theta))
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert torch.allclose(a.double()[rows[i]["valid"]], b[rows[i]["valid"]], atol=1e-5), i


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "no-reset"])
def test_fifo_holds_exactly_the_last_scored_tokens_of_the_document(reset):
    rows = _stream(num_rows=6, doc_starts=(0, 13, 20))
    size = 5
    _, fifo = _ours(rows, 2, size, reset, lambda _, s, q, k, l, v: torch.log_softmax(s.float(), -1))
    scored = [(int(r["offsets"][t]), int(r["docs"][t])) for r in rows for t in range(len(r["offsets"]))
              if r["scored"][t]]
    current_doc = scored[-1][1]
    expected = [o for o, d in scored if not reset or d == current_doc][-size:]
    assert fifo.offsets.tolist() == expected
    assert len(set(fifo.offsets.tolist())) == len(expected)  # no position twice
    last_row = rows[-1]
    assert fifo.keys[-1].tolist() == last_row["keys"][last_row["scored"]][-1].tolist()


def test_no_position_counted_twice():
    """A FIFO entry whose position is inside the current window is not visible."""
    rows = _stream(num_rows=2, T=6, context=3, doc_starts=(0,))
    fifo = FifoMemory(100)
    r = rows[0]
    fifo.append(r["keys"][r["scored"]], r["labels"][r["scored"]], r["offsets"][r["scored"]],
                r["docs"][r["scored"]])
    from trime.core.visibility import WindowAndFifoMemory

    window = rows[1]
    vis = WindowAndFifoMemory(window["valid"][None], window["docs"][None], fifo,
                              window_start=int(window["offsets"][0]))
    seen = vis.visible(0, len(window["offsets"]), 0, len(fifo))[0, -1]
    # offsets 0..5 in the FIFO; the window starts at 3: only 0, 1, 2 come from the FIFO
    assert fifo.offsets[seen].tolist() == [0, 1, 2]


def test_bad_input():
    from trime.settings import EvalSettings

    with pytest.raises(ValueError, match="--long-memory-size must be >= 0"):
        EvalSettings(eval_memory="local,long", long_memory_size=-1)
    with pytest.raises(ValueError, match="long-memory size must be >= 0"):
        FifoMemory(-1)
    fifo = FifoMemory(4)
    k = torch.zeros(2, D)
    fifo.append(k, torch.tensor([3, 4]), torch.tensor([5, 6]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="stream order"):
        fifo.append(k, torch.tensor([3, 4]), torch.tensor([2, 3]), torch.tensor([0, 0]))
    s = torch.zeros(1, 2, V)
    with pytest.raises(ValueError, match="cache lambda"):
        cache_log_probs(s, k[None], k[None], torch.tensor([[3, 4]]), None, 1.0, 1.0)
    with pytest.raises(ValueError, match="cache theta"):
        cache_log_probs(s, k[None], k[None], torch.tensor([[3, 4]]), None, 0.5, 0.0)
    with pytest.raises(ValueError, match="--cache-lambda"):
        EvalSettings(eval_memory="local", eval_scoring="cache", cache_lambda=1.0)
    with pytest.raises(ValueError, match="--cache-theta"):
        EvalSettings(eval_memory="local", eval_scoring="cache", cache_theta=0.0)
