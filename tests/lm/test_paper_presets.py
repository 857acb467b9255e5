"""The paper presets (trime.repro.paper) carry the authors' hyperparameters: each compared with
what the authors' fork parsed from their train_scripts/*.sh (tests/data/authors_layout.json),
translated by meaning to fairseq 0.12; the options parse with fairseq's own parser, and the
tokens per update stay the authors' for any number of GPUs."""

import math
import re

import pytest

pytest.importorskip("fairseq")

from authors_format import LAYOUT  # noqa: E402
from console import USER_DIR, run  # noqa: E402
from trime.repro.paper import (AUTHORS_GPUS, PAPER_MODELS, batch_for_gpus,  # noqa: E402
                               train_options)


def _value(options, name):
    return options[options.index(name) + 1]


AUTHORS_PRESETS = sorted(p for p, m in PAPER_MODELS.items() if m.run in LAYOUT["runs"])


def test_every_preset_but_the_toy_is_an_authors_run():
    assert sorted(PAPER_MODELS) == sorted(AUTHORS_PRESETS + ["paper-tiny"])


@pytest.mark.parametrize("preset", AUTHORS_PRESETS)
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


def _dry_run(*argv):
    _, out = run("trime-repro", *map(str, argv), "--dry-run")
    return out


def test_dry_run_prints_the_commands(tmp_path):
    out = _dry_run("table2", tmp_path / "wt103", "--gpus", 8, "--work", tmp_path / "w")
    trainings = [line for line in out.splitlines() if line.startswith("fairseq-train")]
    assert len(trainings) == 4 and "trime-bm25-batches" in out
    assert all("--fp16 --distributed-world-size 8" in line for line in trainings)
    assert "8 GPU(s) x 1 segments x update-freq 3 = 73,728 tokens per update" in out
    assert "--lr 1.0 --min-lr 0.0001 --stop-min-lr 1e-09" in out
    assert out.splitlines()[1].startswith(f"trime-prepare-wikitext103 {tmp_path / 'wt103'}")
    # TrimeLM_ext's BM25 batches hold a step's segments over the 8 GPUs (1 each)
    assert "--batch-size 8 -o" in out and not (tmp_path / "w").exists()
    code, out = run("trime-repro", "table2", tmp_path, "--preset", "enwik8-38m", "--dry-run",
                    check=False)
    assert code != 0 and "--preset wt103-247m" in out


def test_docs_paper_scale_shows_what_dry_run_prints():
    import os
    import shlex

    from trime.repro.paper import PAPER_TABLES

    doc = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "paper-scale.md")).read()
    blocks = re.findall(r"`(trime-repro (table\d) [^`]*--dry-run[^`]*)`:\n\n```\n(.*?)\n```", doc, re.S)
    assert sorted(b[1] for b in blocks) == sorted(PAPER_TABLES)
    for command, table, printed in blocks:
        assert printed == _dry_run(*shlex.split(command)[1:]).strip(), table


def test_a_corpus_that_does_not_fit_the_preset_is_refused(tmp_path):
    from fairseq_utils import write_dictionary

    write_dictionary(tmp_path / "small", num_words=36)  # not WikiText-103's 267,744 types
    code, out = run("trime-repro", "table3", tmp_path / "small", "--preset", "wt103-150m",
                    "--dry-run", check=False)
    assert code != 0 and "40 types" in out and "trime-prepare-wikitext103" in out
    (tmp_path / "bytes").mkdir()  # enwik8's byte symbols: 204 + fairseq's 4 = 208
    (tmp_path / "bytes" / "dict.txt").write_text("".join(f"{b} 1\n" for b in range(204)))
    out = _dry_run("table4", tmp_path / "bytes", "--preset", "enwik8-38m")
    assert sum(line.startswith("fairseq-train") for line in out.splitlines()) == 3
    assert "trime-prepare-enwik8" not in out  # a binarised corpus: nothing to prepare


def test_table2_dry_run_saves_both_datastores_in_shards_with_their_disk(tmp_path):
    import shlex

    from fairseq import options

    lines = _dry_run("table2", tmp_path, "--gpus", 4, "--dstore-shards", 8, "--work",
                     "runs/paper").splitlines()
    headers = [line for line in lines if re.match(r"# dstore-\w+\.0:", line)]
    assert len(headers) == 2 and all(f"keys {103_227_021 * 1024 * 2 / 1e9:,.1f} GB" in h for h in headers)
    shards = [line for line in lines if line.startswith("CUDA_VISIBLE_DEVICES=")]
    assert len(shards) == 16 and all(line.endswith(" &") for line in shards)
    assert [line.split()[0] for line in shards[:8]] == [f"CUDA_VISIBLE_DEVICES={i % 4}" for i in range(8)]
    assert lines.count("wait") == 4  # two waves of 4 GPUs per datastore
    for line in shards:  # what each GPU runs parses as fairseq-eval-lm's arguments
        words = shlex.split(line.replace('"$(trime-user-dir)"', USER_DIR[1]))[2:-1]
        args = options.parse_args_and_arch(options.get_eval_lm_parser(), words)
        assert args.num_shards == 8 and args.context_window == 2560 and args.gen_subset == "train"
    merges = [line for line in lines if line.startswith("trime-merge-dstore")]
    assert merges == [f"trime-merge-dstore runs/paper/wt103-247m/dstores/{name} " + " ".join(
        f"runs/paper/wt103-247m/dstores/{name}.{i}" for i in range(8)) for name in ("vanilla", "trime_ext")]
    assert [line.split()[3] for line in lines if line.startswith("trime-build-index")] == ["l2", "ip"]


def side_by_side(preset, gpus):
    """Markdown rows of docs/paper-scale.md: a setting, the authors' value (their fork's parsed
    script), trime-repro's options on ``gpus`` GPUs."""
    model = PAPER_MODELS[preset]
    theirs = LAYOUT["runs"][model.run]
    ours = train_options(preset, "trime", gpus)["options"]

    def opt(*names):
        return " ".join(f"`{n} {ours[ours.index(n) + 1]}`" for n in names if n in ours)

    rates = (f"`--max-lr {theirs['max_lr']} --lr {theirs['lr'][0]} --min-lr {theirs['min_lr']}`"
             if theirs["lr_scheduler"] == "cosine" else f"`--lr {theirs['lr'][0]}`")
    rows = [
        ("model", f"`--arch {theirs['arch']}`", opt("--arch")),
        ("segment length L", f"`--tokens-per-sample {theirs['tokens_per_sample']}`",
         opt("--tokens-per-sample")),
        ("batch", f"{AUTHORS_GPUS} GPUs × `--max-tokens {theirs['max_tokens']}` × "
                  f"`--update-freq {theirs['update_freq'][0]}`",
         f"{gpus} GPUs × " + opt("--batch-size", "--update-freq")),
        ("optimizer", f"`--optimizer {theirs['optimizer']}` `--weight-decay {theirs['weight_decay']}`",
         opt("--optimizer", "--weight-decay")),
        ("schedule", f"`--lr-scheduler {theirs['lr_scheduler']}`", opt("--lr-scheduler")),
        ("learning rates", rates, opt("--lr", "--min-lr", "--stop-min-lr")),
        ("warm-up", f"`--warmup-updates {theirs['warmup_updates']}`", opt("--warmup-updates")),
        ("updates", f"`--max-update {theirs['max_update']}`", opt("--max-update")),
        ("clipping, dropout", f"`--clip-norm {theirs['clip_norm']}` `--dropout {theirs['dropout']}`",
         opt("--clip-norm", "--dropout")),
        ("CE warm-up", f"`--ce-warmup-epoch {theirs['ce_warmup_epoch']}`", opt("--ce-warmup-updates")),
    ]
    return [f"| {a} | {b} | {c} |" for a, b, c in rows]


def test_docs_paper_scale_shows_the_authors_values_beside_ours():
    import os

    doc = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "paper-scale.md")).read()
    for preset, gpus in (("wt103-247m", 8), ("wt103-150m", 8), ("enwik8-38m", 4)):
        header = (f"**{preset}** (theirs: `{PAPER_MODELS[preset].run}`; trime-repro on {gpus} GPUs):\n\n"
                  "| setting | the authors' script | trime-repro |\n|---|---|---|\n")
        assert header + "\n".join(side_by_side(preset, gpus)) + "\n" in doc, preset
