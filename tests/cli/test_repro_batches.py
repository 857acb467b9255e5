"""trime-repro's training commands give fairseq the batch the budget asks for: fairseq cuts a batch
down to a multiple of --required-batch-size-multiple (8 by default), so Table 12's 12 x 512 and
41 x 150 need that option set to 1 (checked with fairseq's own parser and batching)."""

import numpy as np
import pytest

from trime.cli.toy_corpus import write_splits


@pytest.mark.parametrize("length, tokens, batch", [(150, 6144, 41), (512, 6144, 12), (3072, 6144, 2),
                                                   (512, 4096, 8)])
def test_fairseq_batches_what_the_budget_asks(tmp_path, length, tokens, batch):
    from fairseq import options
    from fairseq.data import data_utils

    from trime.repro.recipes import PRESETS, Recipes
    from trime.repro.runner import Runner

    write_splits(tmp_path / "raw", train_stories=3, valid_stories=1, test_stories=1)
    recipes = Recipes(Runner(str(tmp_path / "work"), echo=lambda line: None), str(tmp_path / "raw"),
                      PRESETS["cpu"]).at_length(length, tokens)
    _, command, _ = recipes.training("trime")
    command = [str(word) for word in command]  # as the runner runs it
    assert command[command.index("--batch-size") + 1] == str(batch)
    args = options.parse_args_and_arch(options.get_training_parser(), command[1:])
    batches = data_utils.batch_by_size(np.arange(10 * batch, dtype=np.int64), lambda i: length,
                                       max_sentences=args.batch_size,
                                       required_batch_size_multiple=args.required_batch_size_multiple)
    assert {len(b) for b in batches} == {batch}
    # the batch sizes fairseq leaves alone keep the commands of the runs already recorded
    assert ("--required-batch-size-multiple" in command) == (batch > 8 and batch % 8 != 0)
