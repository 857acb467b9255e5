"""Translation checkpoints (legacy-args architectures store an argparse.Namespace) load under
torch >= 2.6's weights-only torch.load once the plugin is imported, and only then."""

import random
import re

import pytest

pytest.importorskip("fairseq")

from console import USER_DIR, run  # noqa: E402

pytestmark = pytest.mark.e2e  # trains a tiny translation model with fairseq-train


def _parallel_corpus(folder, sentences=200):
    """A toy de-en corpus: the target is the source's words, upper-cased, in reverse order."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(30)]
    folder.mkdir()
    for split, count in (("train", sentences), ("valid", 20), ("test", 20)):
        lines = [[rng.choice(words) for _ in range(rng.randint(2, 6))] for _ in range(count)]
        (folder / f"{split}.de").write_text("".join(" ".join(line) + "\n" for line in lines))
        (folder / f"{split}.en").write_text("".join(" ".join(reversed(line)).upper() + "\n" for line in lines))


def test_translation_checkpoint_loads_with_the_plugin_not_without(tmp_path):
    import torch

    raw = tmp_path / "raw"
    _parallel_corpus(raw)
    run("fairseq-preprocess", "--source-lang", "de", "--target-lang", "en",
        "--trainpref", raw / "train", "--validpref", raw / "valid", "--testpref", raw / "test",
        "--destdir", tmp_path / "bin", "--workers", 1)
    run("fairseq-train", tmp_path / "bin", "--arch", "transformer", "--encoder-layers", 1,
        "--decoder-layers", 1, "--encoder-embed-dim", 16, "--decoder-embed-dim", 16,
        "--encoder-ffn-embed-dim", 32, "--decoder-ffn-embed-dim", 32, "--encoder-attention-heads", 2,
        "--decoder-attention-heads", 2, "--optimizer", "adam", "--lr", "1e-3", "--max-update", 2,
        "--batch-size", 16, "--save-dir", tmp_path / "ckpt", "--no-epoch-checkpoints", "--cpu",
        "--num-workers", 0, "--disable-validation")
    checkpoint = tmp_path / "ckpt" / "checkpoint_last.pt"
    # --required-batch-size-multiple 1: with fairseq's default (8), batch_by_size drops a last batch
    # whose size is not a multiple of 8 (fairseq issue #5036): 16 of these 20 sentences at
    # --batch-size 8. trime_lm's evaluation sets it to 1; the translation task will too.
    generate = [tmp_path / "bin", "--path", checkpoint, "--beam", 2, "--batch-size", 8, "--cpu",
                "--gen-subset", "test", "--required-batch-size-multiple", 1, "--max-len-b", 20]
    # a fresh interpreter without the plugin: torch's weights-only load refuses the Namespace
    code, out = run("fairseq-generate", *generate, check=False, in_process=False)
    if int(torch.__version__.split(".")[0]) > 2 or int(torch.__version__.split(".")[1]) >= 6:
        assert code != 0 and "Namespace" in out
    code, out = run("fairseq-generate", *generate, *USER_DIR, check=False, in_process=False)
    assert code == 0, out[-3000:]
    hypotheses = re.findall(r"^H-(\d+)\t", out, flags=re.M)
    assert sorted(map(int, hypotheses)) == list(range(20))  # every test sentence translated


class _NotData:
    pass


def test_numpy_meters_load_but_other_objects_stay_refused(tmp_path):
    """fairseq's --eval-bleu meters keep n-gram counts as numpy arrays in extra_state; those load
    under weights_only, an arbitrary object still does not."""
    import pickle

    import numpy as np
    import torch

    from trime.glue.checkpoints import allow_namespace_in_checkpoints

    if not allow_namespace_in_checkpoints():
        pytest.skip("torch without weights-only safe globals")
    path = tmp_path / "meters.pt"
    torch.save({"extra_state": {"counts": np.arange(4, dtype=np.int64), "ref": np.ones(2)}}, path)
    loaded = torch.load(path)
    assert loaded["extra_state"]["counts"].tolist() == [0, 1, 2, 3]
    torch.save({"extra_state": _NotData()}, tmp_path / "object.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "object.pt")
