"""Empty source or target lines are refused with the line and the fix: by
trime-prepare-translation before anything is written, by --task trime_translation when a split
binarised elsewhere holds one (training, datastore, decoding), and in fairseq-interactive."""

import pytest
import torch

from console import run
from fairseq_utils import build_translation


def _pairs(dictionary, sources, targets):
    from fairseq.data import LanguagePairDataset

    eos = dictionary.eos()
    encode = lambda rows: [torch.tensor(row + [eos]) for row in rows]
    src, tgt = encode(sources), encode(targets)
    return LanguagePairDataset(src, [len(s) for s in src], dictionary, tgt, [len(t) for t in tgt],
                               dictionary)


@pytest.mark.parametrize("side", ["source", "target"])
def test_a_split_with_an_empty_sentence_is_refused(tmp_path, side):
    from trime.mt.task import refuse_empty_sentences

    task, _, _ = build_translation(str(tmp_path))
    words = [[5, 6], [7], [8, 9, 10], [5]]
    refuse_empty_sentences("valid", _pairs(task.tgt_dict, words, words))  # none empty: fine
    holes = [row if i not in (2, 3) else [] for i, row in enumerate(words)]
    sources, targets = (holes, words) if side == "source" else (words, holes)
    with pytest.raises(ValueError, match=rf"valid: pair 2 \(line 3\) has an empty {side} sentence "
                                         r"\(2 pairs have one\): remove those pairs"):
        refuse_empty_sentences("valid", _pairs(task.tgt_dict, sources, targets))


def test_an_empty_interactive_line_is_refused(tmp_path):
    task, _, _ = build_translation(str(tmp_path))
    eos = task.src_dict.eos()
    lines = [torch.tensor([5, 6, eos]), torch.tensor([eos])]
    assert len(task.build_dataset_for_inference(lines[:1], [3])) == 1
    with pytest.raises(ValueError, match="input line 2 of this batch is empty"):
        task.build_dataset_for_inference(lines, [3, 1])


@pytest.mark.e2e  # fairseq-preprocess, fairseq-train and trime-prepare-translation
def test_training_and_preparing_refuse_an_empty_line(tmp_path):
    from parallel_toy import TINY_ARCH, write_pairs

    import trime

    train = write_pairs(tmp_path, "train", 12, 0)
    lines = open(train + ".en").read().splitlines()
    lines[4] = ""
    open(train + ".en", "w").write("\n".join(lines) + "\n")
    run("fairseq-preprocess", "--source-lang", "de", "--target-lang", "en", "--trainpref", train,
        "--destdir", tmp_path / "bin", "--workers", "1")
    code, output = run("fairseq-train", tmp_path / "bin", "--user-dir", trime.USER_DIR, "--task",
                       "trime_translation", *TINY_ARCH, "--optimizer", "adam", "--lr", "1e-3",
                       "--max-tokens", "256", "--max-update", "1", "--disable-validation",
                       "--save-dir", tmp_path / "model", "--cpu", check=False)
    assert code != 0 and "train: pair 4 (line 5) has an empty target sentence" in output
    assert not (tmp_path / "model" / "checkpoint_last.pt").exists()

    (tmp_path / "raw").mkdir()
    for split in ("train", "valid", "test"):
        for lang in ("de", "en"):
            (tmp_path / "raw" / f"{split}.{lang}").write_text(open(f"{train}.{lang}").read())
    code, output = run("trime-prepare-translation", tmp_path / "raw", tmp_path / "prep", "-s", "de",
                       "-t", "en", "--bpe-merges", "10", check=False)
    assert code != 0 and "train.en: line 5 is empty (1 empty lines)" in output
    assert not (tmp_path / "prep").exists()
