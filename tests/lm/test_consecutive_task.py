"""--batching consecutive through the real task: fairseq-preprocess output -> batches.

Document ids are checked against an independent count of title lines in the raw
text; batch invariants of paper Fig. 2b on what fairseq's iterator yields.
"""

import numpy as np
import pytest
import torch

pytest.importorskip("fairseq")

from console import preprocess  # noqa: E402
from fairseq_utils import TINY_MODEL, build  # noqa: E402

L, B, M = 6, 4, 2


def _raw_corpus(path):
    """WikiText-like text: 5 articles of different lengths, sections inside, one tiny."""
    rng = np.random.default_rng(0)
    lines = []
    for doc, n_lines in enumerate([9, 2, 14, 1, 6]):
        lines += ["", f" = Article{doc} = ", ""]  # WikiText: a title between empty lines
        for i in range(n_lines):
            if i == 3:
                lines.append(f" = = Section{doc} = = ")
            if i == 5:
                lines.append(" = Legend ; A = ")  # a table legend: not a title
            lines.append(" ".join(f"w{rng.integers(20)}" for _ in range(rng.integers(3, 9))))
    path.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        (path / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return lines


def _naive_token_docs(lines):
    """Document id of every token of the stream (words + </s> per line), by a plain loop:
    a title is `= X =` (not `= = X = =`) with an empty line before and after it."""
    docs, doc = [], 0  # text before the first title is a document of its own
    for i, line in enumerate(lines):
        words = line.split()
        empty_before = i == 0 or not lines[i - 1].split()
        empty_after = i == len(lines) - 1 or not lines[i + 1].split()
        if (len(words) >= 3 and words[0] == words[-1] == "=" and words[1] != "="
                and empty_before and empty_after and docs):
            doc += 1
        docs += [doc] * (len(words) + 1)
    return np.array(docs)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("consecutive")
    lines = _raw_corpus(root / "raw")
    preprocess(root / "raw", root / "bin")
    return root / "bin", _naive_token_docs(lines)


def _task(data, *extra):
    model = [a for a in TINY_MODEL]
    model[model.index("--tokens-per-sample") + 1] = str(L)
    task, _, _ = build(data, ("--batching", "consecutive", "--consecutive-segments", str(M),
                              "--batch-size", str(B), "--memory", "long", *extra), model=model)
    task.load_dataset("train")
    return task


def _epoch(task, seed, epoch=1, **kwargs):
    itr = task.get_batch_iterator(task.dataset("train"), max_sentences=B, seed=seed, epoch=epoch,
                                  disable_iterator_cache=True, **kwargs)
    return itr, [sample for sample in itr.next_epoch_itr(shuffle=True)]


def test_batches_are_groups_of_consecutive_segments(corpus):
    data, token_docs = corpus
    task = _task(data)
    _, samples = _epoch(task, seed=3)
    segment_doc = token_docs[np.arange(0, len(token_docs), L)]
    seen = []
    for sample in samples:
        ids = sample["id"].tolist()
        starts = sample["trime_segment_start"].tolist()
        assert starts == [i * L for i in ids]
        # per-token document ids equal the independent count of title lines
        T = sample["target"].shape[1]
        for row, start in enumerate(starts):
            n = min(T, len(token_docs) - start)
            assert sample["trime_doc"][row, :n].tolist() == token_docs[start:start + n].tolist()
        # whole groups of M segments; inside a group, same-document segments are consecutive
        assert len(ids) % M == 0 or sample is samples[-1] or len(ids) < B
        for g in range(0, len(ids), M):
            group = ids[g:g + M]
            for a, b in zip(group, group[1:]):
                if segment_doc[a] == segment_doc[b]:
                    assert b == a + 1
                else:  # only packed leftovers mix documents
                    assert segment_doc[b] > segment_doc[a]
        seen += ids
    assert sorted(seen) == list(range(len(task.dataset("train"))))  # each segment once


def test_order_is_deterministic_in_seed_and_resumes(corpus):
    data, _ = corpus
    task = _task(data)
    _, first = _epoch(task, seed=3)
    _, again = _epoch(task, seed=3)
    _, other = _epoch(task, seed=4)
    order = [s["id"].tolist() for s in first]
    assert order == [s["id"].tolist() for s in again]
    assert order != [s["id"].tolist() for s in other]
    # stop after 2 batches, restore the iterator state: the rest of the epoch is the same
    itr = task.get_batch_iterator(task.dataset("train"), max_sentences=B, seed=3, epoch=1,
                                  disable_iterator_cache=True)
    epoch_itr = itr.next_epoch_itr(shuffle=True)
    [next(epoch_itr) for _ in range(2)]
    state = itr.state_dict()
    resumed = task.get_batch_iterator(task.dataset("train"), max_sentences=B, seed=3, epoch=1,
                                      disable_iterator_cache=True)
    resumed.load_state_dict(state)
    rest = [s["id"].tolist() for s in resumed.next_epoch_itr(shuffle=True)]
    assert rest == order[2:]


def test_grouped_shuffling_gives_workers_consecutive_segments(corpus):
    data, _ = corpus
    task = _task(data)
    per_worker = []
    for shard in range(2):
        _, samples = _epoch(task, seed=3, num_shards=2, shard_id=shard, grouped_shuffling=True)
        per_worker.append([s["id"].tolist() if len(s) else [] for s in samples])
    assert len(per_worker[0]) == len(per_worker[1])
    # the groups in corpus order (documents' runs first, packed leftovers last), flattened
    from trime.core.batching import consecutive_groups

    in_order = [s for g in consecutive_groups(task.dataset("train").segment_documents(), M) for s in g]
    runs = 0
    for ids0, ids1 in zip(*per_worker):
        step = ids0 + ids1
        if len(ids0) == len(ids1) == B:
            start = in_order.index(step[0])
            assert start % (2 * B) == 0 and step == in_order[start:start + 2 * B]
            runs += step == list(range(step[0], step[0] + 2 * B))  # one run of 2·B segments
    assert runs >= 2
    assert sorted(s for w in per_worker for b in w for s in b) == list(range(len(task.dataset("train"))))


def test_long_memory_loss_on_a_consecutive_batch(corpus):
    data, _ = corpus
    task = _task(data)
    _, samples = _epoch(task, seed=3)
    torch.manual_seed(0)
    _, model, long_criterion = build(data, ("--memory", "long"))
    local_criterion = build(data, ("--memory", "local"))[2]
    sample = samples[0]
    long_loss = long_criterion(model, sample)[0]
    local_loss = local_criterion(model, sample)[0]
    assert torch.isfinite(long_loss)
    # the batch holds earlier segments of the same document, so long memory sees more
    assert sample["trime_doc"][:, 0].unique().numel() < sample["target"].shape[0]
    assert not torch.allclose(long_loss, local_loss)


def test_consecutive_segments_must_divide_the_batch(corpus):
    data, _ = corpus
    with pytest.raises(ValueError, match=r"--consecutive-segments \(3\) must divide --batch-size \(4\)"):
        build(data, ("--batching", "consecutive", "--consecutive-segments", "3", "--batch-size", "4"))


@pytest.mark.parametrize("context_window", [0, 3])
def test_eval_batches_carry_the_stream_offset_of_every_label(corpus, context_window):
    """What fairseq-eval-lm iterates: in stream order, and position j's label is the stream token
    at trime_label_offset[j] (context positions included), with that token's document id."""
    from fairseq.data import data_utils

    from trime.core.visibility import memory_labels

    data, token_docs = corpus
    task = _task(data)
    task.args.eval_memory = "local,long"
    task.load_dataset("valid")
    stream = torch.cat([t for t in data_utils.load_indexed_dataset(str(data / "valid"), task.dictionary)])
    batches = task.eval_lm_dataloader(task.dataset("valid"), batch_size=2, num_workers=0,
                                      context_window=context_window)
    last, scored = -1, 0
    for sample in batches:
        labels, valid = memory_labels(sample["net_input"]["src_tokens"], sample["target"],
                                      task.dictionary.pad())
        offsets = sample["trime_label_offset"]
        assert torch.equal(labels[valid], stream[offsets[valid]])
        assert torch.equal(sample["trime_doc"][valid], torch.from_numpy(token_docs)[offsets[valid]])
        targets = sample["target"] != task.dictionary.pad()
        assert int(offsets[targets].min()) > last  # stream order, nothing scored twice
        last = int(offsets[targets].max())
        scored += int(targets.sum())
    assert scored == len(stream)


@pytest.mark.parametrize("extra, warned", [
    ((), False),                                   # local memory, random batches: documents unused
    (("--eval-memory", "local,long"), True),       # long memory at evaluation
    (("--memory", "long"), True),                  # known when the criterion is built, after valid
    (("--batching", "consecutive", "--batch-size", "4"), True),
])
def test_one_document_warning_only_where_documents_matter(tmp_path, caplog, extra, warned):
    import logging

    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("train", "valid", "test"):  # no WikiText title, no empty line: one document
        (raw / f"{split}.txt").write_text("\n".join(f"w{i % 7} w{i % 5} w{i % 3}" for i in range(40)) + "\n")
    preprocess(raw, tmp_path / "bin")
    with caplog.at_level(logging.INFO, logger="trime.lm.task"):
        task, _, _ = build(tmp_path / "bin", ("--memory", "local", *extra)
                           if "--memory" not in extra else extra)
        task.load_dataset("valid")
        task.load_dataset("train")
    warnings = [r.getMessage() for r in caplog.records if "no document boundary found" in r.getMessage()]
    assert "1 documents (--doc-boundary title)" in caplog.text
    assert len(warnings) == (2 if warned else 0), warnings


def test_one_document_warning_for_splits_loaded_before_a_long_memory_criterion(tmp_path, caplog):
    """fairseq-train loads valid before it builds the criterion: the warning comes then."""
    import logging

    import trime
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("train", "valid", "test"):
        (raw / f"{split}.txt").write_text("\n".join(f"w{i % 7} w{i % 5}" for i in range(40)) + "\n")
    preprocess(raw, tmp_path / "bin")
    argv = [str(tmp_path / "bin"), "--user-dir", trime.USER_DIR, "--task", "trime_lm", "--criterion",
            "trime_loss", "--memory", "long", *TINY_MODEL]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    from fairseq import tasks

    with caplog.at_level(logging.INFO, logger="trime.lm.task"):
        task = tasks.setup_task(cfg.task)
        task.load_dataset("valid")
        assert "no document boundary found" not in caplog.text
        task.build_criterion(cfg.criterion)
    assert "no document boundary found in valid" in caplog.text
