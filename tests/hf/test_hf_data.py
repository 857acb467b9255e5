"""trime.hf.data: segments cover every target once; consecutive and BM25 batches hold every
segment once per epoch; a collated consecutive batch trained with long memory equals the naive
Eq. 5 over explicit (document, position) memory lists; TrimeTrainer trains with it."""

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from naive import naive_loss_over_memory  # noqa: E402
from test_hf_loss import TINY, tiny_model  # noqa: E402
from trime.hf import TrimeLoss  # noqa: E402
from trime.hf.data import BM25Batches, ConsecutiveBatches, Segments, collate_segments  # noqa: E402


def documents(seed=0, count=4, V=23):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, V, size=int(n)).tolist() for n in rng.integers(9, 30, size=count)]


def test_segments_predict_every_token_once_with_its_document():
    docs = documents()
    segments = Segments(docs, length=6)
    stream = np.concatenate(docs)
    targets = np.concatenate([segments.targets(i) for i in range(len(segments))])
    assert np.array_equal(targets, stream[1:])
    for i in range(len(segments)):
        item = segments[i]
        assert np.array_equal(item["input_ids"].numpy()[1:], segments.targets(i))
        assert item["segment_start"] == 6 * i
        owner = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
        assert np.array_equal(item["doc_ids"].numpy(), owner[6 * i:6 * i + len(item["input_ids"])])
    with pytest.raises(ValueError, match="length must be >= 1"):
        Segments(docs, 0)


@pytest.mark.parametrize("make", [lambda s: ConsecutiveBatches(s, m=2, batch_size=4, seed=3),
                                  lambda s: BM25Batches(s, batch_size=4, k=3, seed=3)])
def test_batches_hold_every_segment_once_per_epoch(make):
    segments = Segments(documents(1, count=6), length=5)
    batches = make(segments)
    first, second = list(batches), list(batches)
    for epoch in (first, second):
        assert sorted(s for b in epoch for s in b) == list(range(len(segments)))
        assert all(len(b) <= 4 for b in epoch)
    assert first != second  # shuffled per epoch
    batches.set_epoch(1)
    assert list(batches) == first  # deterministic in (seed, epoch)


def test_consecutive_groups_are_consecutive_segments_of_one_document():
    segments = Segments(documents(2, count=3), length=4)
    docs = segments.segment_documents()
    for batch in ConsecutiveBatches(segments, m=2, batch_size=4):
        for group in (batch[:2], batch[2:]):
            if len(group) == 2 and docs[group[0]] == docs[group[1]]:
                assert group[1] == group[0] + 1


def test_long_memory_over_a_collated_consecutive_batch_equals_naive():
    """Memory of (segment s, position t): every earlier stream position of the same document in
    the batch, by explicit lists; padding is neither scored nor memory."""
    segments = Segments(documents(3, count=2), length=5)
    docs = segments.segment_documents()
    batch_ids = next(b for b in ConsecutiveBatches(segments, m=3, batch_size=3, seed=1)
                     if len(b) == 3 and len(set(docs[b])) == 1)  # three consecutive segments of one document
    batch = collate_segments([segments[i] for i in batch_ids])
    model = tiny_model("gpt2")
    out = TrimeLoss(model, "long", kernel="chunked")(**batch)
    labels = batch["labels"][:, 1:]
    valid = labels != -100
    position = batch["segment_starts"][:, None] + torch.arange(labels.shape[1])[None]
    docs = batch["doc_ids"][:, :-1]
    B, N = labels.shape
    memory = [[[(r, j) for r in range(B) for j in range(N)
                if valid[r, j] and docs[r, j] == docs[s, t] and position[r, j] < position[s, t]]
               for t in range(N)] for s in range(B)]
    captured = {}
    handle = model.get_submodule(TINY["gpt2"][1]).register_forward_pre_hook(
        lambda m, inputs: captured.update(g=inputs[0]))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    handle.remove()
    naive = naive_loss_over_memory(logits[:, :-1], captured["g"][:, :-1], labels, memory, -100)
    assert torch.allclose(out.loss * out.num_tokens, naive, rtol=1e-6)
    assert any(len(m) > t for row in memory for t, m in enumerate(row))  # it reached past the segment


def test_trime_trainer_trains_with_bm25_batches(tmp_path):
    from trime.hf.trainer import TrimeTrainer

    segments = Segments(documents(4, count=8), length=8)
    model = tiny_model("gpt2").float()
    loss = TrimeLoss(model, "ext", ce_warmup_steps=2)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=6, learning_rate=1e-2, logging_steps=1,
        report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = TrimeTrainer(model=model, args=args, train_dataset=segments, trime_loss=loss,
                           train_batches=BM25Batches(segments, batch_size=4, k=3))
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 6 and all(np.isfinite(entry["loss"]) for entry in logged)
    # lm_loss beside loss; equal during the CE warm-up (steps 0 and 1), apart once memory is used
    # (a batch of one segment whose own segment is dropped has none)
    assert all("lm_loss" in entry for entry in logged)
    assert all(entry["lm_loss"] == pytest.approx(entry["loss"], rel=1e-3) for entry in logged[:2])
    assert any(entry["lm_loss"] != pytest.approx(entry["loss"], rel=1e-3) for entry in logged[2:])
    assert loss.training_calls == 0  # every call was given the Trainer's step
