"""The paper's models at full scale: the authors' training hyperparameters, in fairseq 0.12 + trime.

Every value comes from the authors' ``train_scripts/*.sh`` as their fork's own parser reads them
(``tests/data/authors_layout.json``, made by ``scripts/authors_layout.py``; a test compares this
module with it), trained on 4 GPUs (their README). They are translated by meaning, not by
string, where fairseq changed between their 0.9 and 0.12:

- the cosine schedule: their ``--max-lr 1.0 --lr 0.0001 --min-lr 1e-09`` (peak, floor, stop) is
  0.12's ``--lr 1.0 --min-lr 0.0001 --stop-min-lr 1e-09``;
- ``--ce-warmup-epoch E`` (their train.py: plain LM loss while epoch <= E) is trime's
  ``--ce-warmup-updates``: E × the updates of an epoch, from the corpus's token count;
- the batch: their 4 GPUs × ``--max-tokens`` / L segments × ``--update-freq`` is kept for any
  ``--gpus N`` by choosing the segments per GPU (``--batch-size``) and the update frequency.
"""

import math
import shlex
from dataclasses import dataclass
from typing import Dict, Tuple

AUTHORS_GPUS = 4  # "trained on 4 GPUs" (their README)
# the paper's speed of running the 247M model (Table 2: tokens/s on one RTX 3090, evaluation);
# none is given for the others
PAPER_TOKENS_PER_SECOND = {"wt103-247m": 3600}
TRAINING_PASSES = 3  # a training token costs about 3 forward passes (backward ≈ 2)
WIKITEXT103_TRAIN_TOKENS = 103_227_021  # published, one <eos> per line included
ENWIK8_TRAIN_TOKENS = 90_000_000  # bytes (a newline byte becomes its line's <eos>)


# what a preset's corpus folder must hold: fairseq's dictionary size for WikiText-103 (the
# models' embedding rows); byte symbols for enwik8 (208 with fairseq's 4 and its padding to 8)
CORPUS_DICTIONARY = {"wt103-247m": ("wikitext-103", 267_744), "wt103-150m": ("wikitext-103", 267_744),
                     "enwik8-38m": ("enwik8", 208)}


def check_corpus(preset: str, data: str) -> None:
    """Refuse a corpus folder that is not the preset's (a missing one is fine for --dry-run)."""
    import os

    path = os.path.join(data, "dict.txt")
    if not os.path.isfile(path):
        return
    from fairseq.data import Dictionary

    corpus, size = CORPUS_DICTIONARY[preset]
    found = len(Dictionary.load(path))
    prepare = "trime-prepare-wikitext103 OUT" if corpus == "wikitext-103" else "trime-prepare-enwik8 OUT"
    if found != size:
        raise ValueError(f"{data} has a dictionary of {found:,} types, the {corpus} models of "
                         f"--preset {preset} have {size:,}: give OUT/data-bin of `{prepare}`")


@dataclass(frozen=True)
class PaperModel:
    """One column of the paper's Table 9, as the authors trained it."""

    run: str                        # their train script, e.g. wiki103-247M-trime
    arch: str                       # registered by fairseq or trime (trime/lm/authors.py)
    tokens_per_sample: int
    max_tokens: int                 # theirs, per GPU
    update_freq: int                # theirs, on AUTHORS_GPUS
    optimizer: Tuple[str, ...]      # fairseq 0.12 options
    schedule: Tuple[str, ...]
    max_update: int
    ce_warmup_epochs: int
    train_tokens: int
    model: Tuple[str, ...] = ()     # options beyond the architecture's defaults
    dropout: float = 0.3
    clip_norm: float = 0.0
    # TrimeLM_long's memory in their runs: consecutive segments on one GPU (trime_long_loss_same_device,
    # --keep-order: a GPU's whole batch) or one segment on each of 4 GPUs (trime_long_loss)
    long_across_workers: bool = False
    key_dim: int = 0                # g(c): the input of the last FFN (decoder_embed_dim)
    eval_context_window: int = 0    # their evaluation's context window (stride = L - it)

    @property
    def segments_per_update(self) -> int:
        return AUTHORS_GPUS * (self.max_tokens // self.tokens_per_sample) * self.update_freq


WT103_247M_SCHEDULE = ("--lr-scheduler", "cosine", "--lr", "1.0", "--min-lr", "0.0001",
                       "--stop-min-lr", "1e-09", "--lr-period-updates", "270000", "--lr-shrink",
                       "0.75", "--t-mult", "2", "--warmup-updates", "16000", "--warmup-init-lr",
                       "1e-07")
ADAM = ("--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--weight-decay", "0.01")
PAPER_MODELS = {
    "wt103-247m": PaperModel(
        "wiki103-247M-trime", "transformer_lm_wiki103", 3072, 3072, 6,
        ("--optimizer", "nag", "--weight-decay", "0.0"), WT103_247M_SCHEDULE, 286000, 9,
        WIKITEXT103_TRAIN_TOKENS, clip_norm=0.1, long_across_workers=True, key_dim=1024,
        eval_context_window=2560),
    "wt103-150m": PaperModel(
        "wiki103-150M-trime", "transformer_lm_wiki103_150M", 150, 9000, 2, ADAM,
        ("--lr-scheduler", "inverse_sqrt", "--lr", "0.0005", "--warmup-updates", "8000",
         "--warmup-init-lr", "1e-07"), 200000, 3, WIKITEXT103_TRAIN_TOKENS,
        model=("--adaptive-softmax-factor", "1", "--adaptive-input-factor", "1")),
    "enwik8-38m": PaperModel(
        "enwik8-38M-trime", "transformer_lm_enwik8", 512, 12288, 1, ADAM,
        ("--lr-scheduler", "cosine", "--lr", "0.00025", "--min-lr", "0.0", "--warmup-updates", "0"),
        400000, 3, ENWIK8_TRAIN_TOKENS),
}
# the trained rows of each table: trime's training recipes (trime.repro.recipes.MODELS) and the
# authors' run that is its reference
PAPER_TABLES = {"table2": "wt103-247m", "table3": "wt103-150m", "table4": "enwik8-38m"}
# the models whose training-set datastore a table searches (kNN-LM rows, TrimeLM_ext rows)
TABLE_DATASTORES = {"table2": ("vanilla", "trime_ext")}
INDEX_OPTIONS = ("--nlist", "4096", "--pq-m", "64", "--pq-bits", "8",
                 "--train-size", "1000000")  # the paper's IVFPQ: 4,096 lists x 64-byte codes
# kNN-LM searches by L2 distance (Khandelwal et al.), TrimeLM_ext by TRIME's inner product
DATASTORE_METRIC = {"vanilla": "l2", "trime_ext": "ip"}
TABLE_MODELS = {"table2": ("vanilla", "trime", "trime_long", "trime_ext"),
                "table3": ("vanilla", "trime", "trime_long"), "table4": ("vanilla", "trime", "trime_long")}


def batch_for_gpus(model: PaperModel, gpus: int) -> Tuple[int, int]:
    """(segments per GPU per step, update frequency) on ``gpus`` GPUs giving the authors' segments
    per update: the most segments per GPU that fit their per-GPU memory (their --max-tokens)."""
    total, most = model.segments_per_update, model.max_tokens // model.tokens_per_sample
    for update_freq in range(1, total + 1):
        if total % (gpus * update_freq) == 0 and total // (gpus * update_freq) <= most:
            return total // (gpus * update_freq), update_freq
    fitting = [n for n in range(1, total + 1) if total % n == 0]
    raise ValueError(f"{gpus} GPUs cannot share the authors' {total} segments per update equally: "
                     f"use --gpus among {', '.join(map(str, fitting[:12]))}")


def updates_per_epoch(model: PaperModel, train_tokens: int = None) -> int:
    """Updates of one epoch over the training stream cut into L-token segments."""
    segments = math.ceil((train_tokens or model.train_tokens) / model.tokens_per_sample)
    return math.ceil(segments / model.segments_per_update)


def train_options(preset: str, variant: str, gpus: int, train_tokens: int = None) -> Dict:
    """The fairseq-train options of ``variant`` (vanilla, trime, trime_long, trime_ext) of a paper
    preset on ``gpus`` GPUs of one node, and what they add up to."""
    from trime.repro.recipes import MODELS

    model = PAPER_MODELS[preset]
    per_gpu, update_freq = batch_for_gpus(model, gpus)
    options = [*MODELS[variant], "--arch", model.arch, *model.model,
               "--tokens-per-sample", str(model.tokens_per_sample), "--batch-size", str(per_gpu),
               "--update-freq", str(update_freq), "--required-batch-size-multiple", "1",
               *model.optimizer, "--clip-norm", str(model.clip_norm), *model.schedule,
               "--max-update", str(model.max_update), "--dropout", str(model.dropout), "--fp16",
               "--distributed-world-size", str(gpus)]
    if variant != "vanilla":
        options += ["--ce-warmup-updates",
                    str(model.ce_warmup_epochs * updates_per_epoch(model, train_tokens))]
    if variant == "trime_long":
        if model.long_across_workers:  # their trime_long_loss: a document's segments on 4 GPUs
            if (gpus * per_gpu) % AUTHORS_GPUS:
                raise ValueError(f"TrimeLM_long of {preset} keeps {AUTHORS_GPUS} consecutive segments "
                                 f"on {AUTHORS_GPUS} workers: use --gpus a multiple of {AUTHORS_GPUS}")
            options += ["--consecutive-segments", str(AUTHORS_GPUS), "--grouped-shuffling",
                        "--memory-across-workers"]
        else:  # their trime_long_loss_same_device with --keep-order: a GPU's batch is consecutive
            theirs = model.max_tokens // model.tokens_per_sample
            if per_gpu != theirs:
                raise ValueError(f"TrimeLM_long of {preset} keeps {theirs} consecutive segments on one "
                                 f"GPU; {gpus} GPUs would hold {per_gpu}: use --gpus of at most "
                                 f"{model.segments_per_update // theirs}")
            options += ["--consecutive-segments", str(per_gpu)]
    if variant == "trime_ext":  # in-batch memory over every worker's segments (§4.3), p = 0.9
        options += ["--local-drop-prob", "0.9", "--bm25-batches", "bm25.json",
                    "--memory-across-workers"]
    return {"options": options, "gpus": gpus, "segments_per_gpu": per_gpu,
            "update_freq": update_freq,
            "tokens_per_update": gpus * per_gpu * update_freq * model.tokens_per_sample,
            "authors_run": model.run}


def dry_run_lines(table: str, data: str, work: str, gpus: int):
    """What ``trime-repro TABLE DATA --preset P --gpus N --dry-run`` prints: each trained row's
    commands with the authors' hyperparameters, tokens trained and, where the paper gives a speed,
    GPU-hours; for TrimeLM_ext the BM25 batches first."""
    preset = PAPER_TABLES[table]
    check_corpus(preset, data)
    model = PAPER_MODELS[preset]
    user_dir = '"$(trime-user-dir)"'
    lines = []
    for variant in TABLE_MODELS[table]:
        try:
            plan = train_options(preset, variant, gpus)
        except ValueError as error:
            lines.append(f"# {variant}: not with --gpus {gpus}: {error}")
            continue
        tokens = model.max_update * plan["tokens_per_update"]
        rate = PAPER_TOKENS_PER_SECOND.get(preset)
        cost = (f"; roughly {tokens * TRAINING_PASSES / rate / 3600:,.0f} RTX 3090 GPU-hours (the "
                f"paper's {rate:,} tokens/s of evaluation, {TRAINING_PASSES} passes per training "
                "token)" if rate else "; the paper gives no speed for this model")
        lines.append(f"# {variant} (the authors' {plan['authors_run']} hyperparameters): "
                     f"{plan['gpus']} GPU(s) x {plan['segments_per_gpu']} segments x update-freq "
                     f"{plan['update_freq']} = {plan['tokens_per_update']:,} tokens per update; "
                     f"{model.max_update:,} updates = {tokens / 1e9:.1f}B tokens{cost}")
        if variant == "trime_ext":
            lines.append(shlex.join(["trime-bm25-batches", data, "--split", "train",
                                     "--tokens-per-sample", str(model.tokens_per_sample), "--k", "20",
                                     "--batch-size", str(plan["gpus"] * plan["segments_per_gpu"]),
                                     "-o", "bm25.json"]))
        lines.append(" ".join(["fairseq-train", shlex.quote(data), "--user-dir", user_dir,
                               shlex.join(plan["options"]),
                               "--save-dir", shlex.quote(f"{work}/models/{variant}")]))
    for variant in TABLE_DATASTORES.get(table, ()):
        lines += datastore_lines(model, preset, variant, data, work, gpus)
    return lines


def datastore_lines(model: PaperModel, preset: str, variant: str, data: str, work: str, gpus: int):
    """The training-set datastore of ``variant``'s model, saved with the evaluation's context
    window in one shard per GPU, merged and indexed as the paper did; the disk it takes."""
    tokens = model.train_tokens
    keys_gb, values_gb = tokens * model.key_dim * 2 / 1e9, tokens * 4 / 1e9
    index_gb = tokens * (64 + 8) / 1e9  # 64-byte codes and an 8-byte id per key
    rate = PAPER_TOKENS_PER_SECOND.get(preset)
    hours = f", roughly {tokens / rate / 3600:,.0f} GPU-hours at the paper's {rate:,} tokens/s" if rate else ""
    store = f"{work}/dstore-{variant}"
    lines = [f"# datastore of {variant} (train, {tokens:,} keys of {model.key_dim}): keys "
             f"{keys_gb:,.0f} GB + values {values_gb:.1f} GB on disk (twice while the shards are "
             f"merged); {DATASTORE_METRIC[variant]} index "
             f"{index_gb:.1f} GB{hours}"]
    for shard in range(gpus):
        lines.append(" ".join([
            f"CUDA_VISIBLE_DEVICES={shard}", "fairseq-eval-lm", shlex.quote(data), "--user-dir",
            '"$(trime-user-dir)"', shlex.join([
                "--task", "trime_lm", "--path", f"{work}/models/{variant}/checkpoint_best.pt",
                "--gen-subset", "train", "--tokens-per-sample", str(model.tokens_per_sample),
                "--context-window", str(model.eval_context_window), "--fp16", "--save-dstore",
                f"{store}.{shard}", "--num-shards", str(gpus), "--shard-id", str(shard)]), "&"]))
    lines.append("wait")
    lines.append(shlex.join(["trime-merge-dstore", store, *[f"{store}.{i}" for i in range(gpus)]]))
    lines.append(shlex.join(["trime-build-index", store, "--metric", DATASTORE_METRIC[variant],
                             *INDEX_OPTIONS]))
    return lines
