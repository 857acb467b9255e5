"""The paper presets (trime.repro.paper) carry the authors' hyperparameters: each compared with
what the authors' fork parsed from their train_scripts/*.sh (tests/data/authors_layout.json),
translated by meaning to fairseq 0.12; the options parse with fairseq's own parser, and the
tokens per update stay the authors' for any number of GPUs."""

import math

import pytest

pytest.importorskip("fairseq")

from authors_format import LAYOUT  # noqa: E402
from console import USER_DIR, run  # noqa: E402
from trime.repro.paper import (AUTHORS_GPUS, PAPER_MODELS, batch_for_gpus,  # noqa: E402
                               train_options)


def _value(options, name):
    return options[options.index(name) + 1]


@pytest.mark.parametrize("preset", sorted(PAPER_MODELS))
def test_the_authors_hyperparameters_translated_by_meaning(preset):
    model = PAPER_MODELS[preset]
    theirs = LAYOUT["runs"][model.run]
    options = train_options(preset, "trime", AUTHORS_GPUS)["options"]
    assert _value(options, "--arch") == theirs["arch"]
    assert int(_value(options, "--tokens-per-sample")) == theirs["tokens_per_sample"]
    # the batch on their 4 GPUs: --max-tokens per GPU = segments x L, the same --update-freq
    assert int(_value(options, "--batch-size")) * theirs["tokens_per_sample"] == theirs["max_tokens"]
    assert int(_value(options, "--update-freq")) == theirs["update_freq"][0]
    assert _value(options, "--optimizer") == theirs["optimizer"]
    assert float(_value(options, "--clip-norm")) == theirs["clip_norm"]
    assert float(_value(options, "--dropout")) == theirs["dropout"]
    assert float(_value(options, "--weight-decay")) == theirs["weight_decay"]
    assert int(_value(options, "--max-update")) == theirs["max_update"]
    assert _value(options, "--lr-scheduler") == theirs["lr_scheduler"]
    assert int(_value(options, "--warmup-updates")) == theirs["warmup_updates"]
    if "adam_betas" in theirs:
        assert eval(_value(options, "--adam-betas")) == eval(theirs["adam_betas"])
    if theirs["lr_scheduler"] == "cosine":  # 0.9's --max-lr / --lr / --min-lr = 0.12's --lr / --min-lr / --stop-min-lr
        assert float(_value(options, "--lr")) == theirs["max_lr"]
        assert float(_value(options, "--min-lr")) == theirs["lr"][0]
        stop = float(_value(options, "--stop-min-lr")) if "--stop-min-lr" in options else -1
        assert stop == theirs["min_lr"]
        for name, default in (("lr_period_updates", -1), ("lr_shrink", 0.1), ("t_mult", 1)):
            flag = "--" + name.replace("_", "-")  # not given: fairseq's cosine default
            ours = float(_value(options, flag)) if flag in options else default
            assert ours == theirs[name], name
    else:
        assert float(_value(options, "--lr")) == theirs["lr"][0]
    if theirs["warmup_init_lr"] > 0:
        assert float(_value(options, "--warmup-init-lr")) == theirs["warmup_init_lr"]
    for flag, field in (("--adaptive-softmax-factor", "adaptive_softmax_factor"),
                        ("--adaptive-input-factor", "adaptive_input_factor")):
        if flag in options:
            assert float(_value(options, flag)) == theirs[field]
    # --ce-warmup-epoch E (plain LM loss while epoch <= E) = E epochs of updates
    segments = math.ceil(model.train_tokens / theirs["tokens_per_sample"])
    per_update = AUTHORS_GPUS * theirs["max_tokens"] // theirs["tokens_per_sample"] * theirs["update_freq"][0]
    assert int(_value(options, "--ce-warmup-updates")) == \
        theirs["ce_warmup_epoch"] * math.ceil(segments / per_update)


def test_long_and_ext_memory_as_the_authors_trained_them():
    for preset, run_name in (("wt103-150m", "wiki103-150M-trime_long"),
                             ("enwik8-38m", "enwik8-38M-trime_long")):
        theirs = LAYOUT["runs"][run_name]  # same device, --keep-order: a GPU's batch in order
        assert theirs["criterion"] == "trime_long_loss_same_device" and theirs["keep_order"]
        options = train_options(preset, "trime_long", AUTHORS_GPUS)["options"]
        assert int(_value(options, "--consecutive-segments")) == \
            theirs["max_tokens"] // theirs["tokens_per_sample"]
        assert "--memory-across-workers" not in options
    theirs = LAYOUT["runs"]["wiki103-247M-trime_long"]  # one segment per GPU, memory across GPUs
    assert theirs["criterion"] == "trime_long_loss"
    options = train_options("wt103-247m", "trime_long", 8)["options"]
    assert _value(options, "--consecutive-segments") == "4" and "--memory-across-workers" in options
    with pytest.raises(ValueError, match="multiple of 4"):
        train_options("wt103-247m", "trime_long", 2)
    theirs = LAYOUT["runs"]["wiki103-247M-trime_ext"]
    options = train_options("wt103-247m", "trime_ext", 4)["options"]
    assert float(_value(options, "--local-drop-prob")) == theirs["cross_sent_ratio"]


@pytest.mark.parametrize("preset", sorted(PAPER_MODELS))
@pytest.mark.parametrize("gpus", [1, 2, 4, 8])
def test_any_gpu_count_keeps_the_authors_tokens_per_update(preset, gpus):
    model = PAPER_MODELS[preset]
    per_gpu, update_freq = batch_for_gpus(model, gpus)
    assert gpus * per_gpu * update_freq == model.segments_per_update
    assert per_gpu <= model.max_tokens // model.tokens_per_sample  # fits their per-GPU memory
    with pytest.raises(ValueError, match="cannot share"):
        batch_for_gpus(model, 7)


@pytest.mark.parametrize("variant", ["vanilla", "trime", "trime_long", "trime_ext"])
def test_the_options_parse_with_fairseqs_training_parser(variant, tmp_path):
    from fairseq import options

    argv = [str(tmp_path), *USER_DIR, *train_options("wt103-247m", variant, 8)["options"]]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    assert args.update_freq == [3] and args.distributed_world_size == 8 and args.fp16


def test_dry_run_prints_the_commands(tmp_path):
    _, out = run("trime-repro", "table2", tmp_path, "--preset", "wt103-247m", "--gpus", 8,
                 "--dry-run", "--work", tmp_path / "w")
    assert out.count("fairseq-train") == 4 and "trime-bm25-batches" in out
    assert "8 GPU(s) x 1 segments x update-freq 3 = 73,728 tokens per update" in out
    assert "--lr 1.0 --min-lr 0.0001 --stop-min-lr 1e-09" in out
    code, out = run("trime-repro", "table2", tmp_path, "--preset", "wt103-247m", check=False)
    assert code != 0 and "--dry-run" in out
    code, out = run("trime-repro", "table2", tmp_path, "--preset", "enwik8-38m", "--dry-run",
                    check=False)
    assert code != 0 and "--preset wt103-247m" in out


def test_docs_paper_scale_shows_what_dry_run_prints():
    import os
    import re

    from trime.repro.paper import PAPER_TABLES, dry_run_lines

    doc = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "paper-scale.md")).read()
    blocks = re.findall(r"`trime-repro (table\d) (\S+) --preset (\S+) --gpus (\d+) --dry-run --work (\S+)`:"
                        r"\n\n```\n(.*?)\n```", doc, re.S)
    assert sorted(b[0] for b in blocks) == sorted(PAPER_TABLES)
    for table, data, preset, gpus, work, printed in blocks:
        assert PAPER_TABLES[table] == preset
        assert printed == "\n".join(dry_run_lines(table, data, work, int(gpus))), table


def test_a_corpus_that_does_not_fit_the_preset_is_refused(tmp_path):
    from fairseq_utils import write_dictionary

    write_dictionary(tmp_path / "small", num_words=36)  # not WikiText-103's 267,744 types
    code, out = run("trime-repro", "table3", tmp_path / "small", "--preset", "wt103-150m",
                    "--dry-run", check=False)
    assert code != 0 and "40 types" in out and "trime-prepare-wikitext103" in out
    write_dictionary(tmp_path / "bytes", num_words=204)  # enwik8's byte symbols: 208 with fairseq's 4
    _, out = run("trime-repro", "table4", tmp_path / "bytes", "--preset", "enwik8-38m", "--dry-run")
    assert out.count("fairseq-train") == 3


def test_table2_dry_run_saves_both_datastores_in_shards_with_their_disk(tmp_path):
    import shlex

    from fairseq import options

    from trime.repro.paper import dry_run_lines

    lines = dry_run_lines("table2", str(tmp_path), "runs/paper", 2)
    headers = [line for line in lines if line.startswith("# datastore")]
    assert len(headers) == 2 and all(f"{103_227_021 * 1024 * 2 / 1e9:,.0f} GB" in h for h in headers)
    shards = [line for line in lines if line.startswith("CUDA_VISIBLE_DEVICES=")]
    assert len(shards) == 4 and all(line.endswith(" &") for line in shards)
    for line in shards:  # what each GPU runs parses as fairseq-eval-lm's arguments
        words = shlex.split(line.replace('"$(trime-user-dir)"', USER_DIR[1]))[2:-1]
        args = options.parse_args_and_arch(options.get_eval_lm_parser(), words)
        assert args.num_shards == 2 and args.context_window == 2560 and args.gen_subset == "train"
    merges = [line for line in lines if line.startswith("trime-merge-dstore")]
    assert merges == ["trime-merge-dstore runs/paper/dstore-vanilla runs/paper/dstore-vanilla.0 "
                      "runs/paper/dstore-vanilla.1",
                      "trime-merge-dstore runs/paper/dstore-trime_ext runs/paper/dstore-trime_ext.0 "
                      "runs/paper/dstore-trime_ext.1"]
    assert [line.split()[3] for line in lines if line.startswith("trime-build-index")] == ["l2", "ip"]
