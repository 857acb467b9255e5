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
from dataclasses import dataclass
from typing import Dict, Tuple

AUTHORS_GPUS = 4  # "trained on 4 GPUs" (their README)
# the paper's speed of running the 247M model (Table 2: tokens/s on one RTX 3090, evaluation);
# none is given for the others
PAPER_TOKENS_PER_SECOND = {"wt103-247m": 3600}
TRAINING_PASSES = 3  # a training token costs about 3 forward passes (backward ≈ 2)
WIKITEXT103_TRAIN_TOKENS = 103_227_021  # published, one <eos> per line included
ENWIK8_TRAIN_TOKENS = 90_000_000  # bytes (a newline byte becomes its line's <eos>)


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
    eval_break_mode_complete: bool = False  # their 247M evaluation: --sample-break-mode complete
    layers: int = 0                 # for the memory estimates of --dry-run
    heads: int = 0
    params: int = 0                 # the paper's parameter count

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
        eval_context_window=2560, eval_break_mode_complete=True, layers=16, heads=8,
        params=247_000_000),
    "wt103-150m": PaperModel(
        "wiki103-150M-trime", "transformer_lm_wiki103_150M", 150, 9000, 2, ADAM,
        ("--lr-scheduler", "inverse_sqrt", "--lr", "0.0005", "--warmup-updates", "8000",
         "--warmup-init-lr", "1e-07"), 200000, 3, WIKITEXT103_TRAIN_TOKENS,
        model=("--adaptive-softmax-factor", "1", "--adaptive-input-factor", "1"), key_dim=410,
        eval_context_window=86, layers=16, heads=10, params=150_000_000),
    "enwik8-38m": PaperModel(
        "enwik8-38M-trime", "transformer_lm_enwik8", 512, 12288, 1, ADAM,
        ("--lr-scheduler", "cosine", "--lr", "0.00025", "--min-lr", "0.0", "--warmup-updates", "0"),
        400000, 3, ENWIK8_TRAIN_TOKENS, key_dim=512, eval_context_window=432, layers=12, heads=8,
        params=38_000_000),
    # a toy of the same code paths (the tests' mock tables 2-5; any corpus, minutes on a CPU)
    "paper-tiny": PaperModel(
        "(toy)", "transformer_lm", 32, 64, 1, ADAM,
        ("--lr-scheduler", "inverse_sqrt", "--lr", "0.005", "--warmup-updates", "2"), 8, 0, 0,
        model=("--decoder-layers", "2", "--decoder-embed-dim", "16", "--decoder-ffn-embed-dim", "32",
               "--decoder-input-dim", "16", "--decoder-output-dim", "16",
               "--decoder-attention-heads", "2"),
        dropout=0.1, key_dim=16, eval_context_window=16, layers=2, heads=2, params=30_000),
}
INDEX_OPTIONS = ("--nlist", "4096", "--pq-m", "64", "--pq-bits", "8",
                 "--train-size", "1000000")  # the paper's IVFPQ: 4,096 lists x 64-byte codes
KNN_OPTIONS = ("--knn-k", "1024", "--knn-nprobe", "32")  # Appendix D: K = 1,024, nprobe 32


@dataclass(frozen=True)
class PaperTable:
    """A paper-scale table: the models it trains (or reuses), its corpus, its long memory S."""

    preset: str
    corpus: str                 # wikitext-103 or enwik8, as trime-prepare-* makes them
    long_memory_size: int       # S of its long-memory rows (Table 3: 15,000; 4: 24,576; 5: 49,152)
    unit: str = "ppl"


PAPER_TABLES = {"table2": PaperTable("wt103-247m", "wikitext-103", 12288),
                "table3": PaperTable("wt103-150m", "wikitext-103", 15000),
                "table4": PaperTable("enwik8-38m", "enwik8", 24576, unit="bpc"),
                "table5": PaperTable("wt103-247m", "wikitext-103", 49152)}
# the paper-tiny preset's corpora: enwik8's held-out splits and the books' shares, in a toy's size
TOY_PREPARE = {"enwik8": ("--held-out-bytes", "2000")}
BOOKS_TOY_TOKENS = {"train": 300, "valid": 100, "test": 100}
PREPARE = {"wikitext-103": "trime-prepare-wikitext103", "enwik8": "trime-prepare-enwik8"}
# fairseq's dictionary of each corpus (the models' embedding rows): WikiText-103's 267,744 types;
# enwik8's byte symbols, 208 with fairseq's 4 and its padding to a multiple of 8
CORPUS_DICTIONARY = {"wikitext-103": 267_744, "enwik8": 208}
# published token counts (one <eos> per line included), for --dry-run before the corpus exists
SPLIT_TOKENS = {"wikitext-103": {"train": WIKITEXT103_TRAIN_TOKENS, "valid": 217_646, "test": 245_569},
                "enwik8": {"train": ENWIK8_TRAIN_TOKENS, "valid": 5_000_000, "test": 5_000_000},
                "books": {"train": 100_000_000, "valid": 250_000, "test": 250_000}}


def check_corpus(table: str, preset: str, data_bin: str) -> None:
    """Refuse a binarised corpus that is not the table's (the preset's dictionary size; byte
    symbols for enwik8). A folder not made yet is fine (--dry-run, or prepared first)."""
    import os

    path = os.path.join(data_bin, "dict.txt")
    if not os.path.isfile(path):
        return
    from fairseq.data import Dictionary

    corpus = PAPER_TABLES[table].corpus
    dictionary = Dictionary.load(path)
    prepare = f"{PREPARE[corpus]} OUT"
    if corpus == "enwik8":
        words = dictionary.symbols[dictionary.nspecial:]
        if not all(w.isdigit() and int(w) < 256 for w in words if not w.startswith("madeupword")):
            raise ValueError(f"{data_bin} is not a byte-level corpus (symbols other than 0-255 in "
                             f"dict.txt): {table} needs OUT/data-bin of `{prepare}`")
    size = CORPUS_DICTIONARY[corpus]
    if preset != "paper-tiny" and len(dictionary) != size:
        raise ValueError(f"{data_bin} has a dictionary of {len(dictionary):,} types, the {corpus} "
                         f"models of --preset {preset} have {size:,}: give OUT/data-bin of `{prepare}`")


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


def paper_budget(table: str, preset: str, gpus: int, device: str, dstore_shards: int = None):
    """The ``trime.repro.recipes.Budget`` of a paper table: the preset's model and per-GPU batch,
    its evaluation (context window, S, K, nprobe, the IVFPQ index) and dev grids around the
    authors' tuned values (τ 1.03-1.25; λ 0.3 and their interpolation temperature ≈ 0.33)."""
    from trime.repro.recipes import Budget

    model = PAPER_MODELS[preset]
    per_gpu, _ = batch_for_gpus(model, gpus)
    tiny = preset == "paper-tiny"
    return Budget(
        model=("--arch", model.arch, *model.model), tokens_per_sample=model.tokens_per_sample,
        batch_size=per_gpu, updates=model.max_update,
        long_memory_size=64 if tiny else PAPER_TABLES[table].long_memory_size,
        doc_boundary="none" if PAPER_TABLES[table].corpus == "enwik8" else "title",
        eval_batch_size=4 if tiny else 1, device=device,
        knn=("--knn-k", "8", "--knn-nprobe", "4") if tiny else KNN_OPTIONS,
        index=(("--index-type", "ivfpq", "--nlist", "8", "--pq-m", "4", "--train-size", "4096")
               if tiny else INDEX_OPTIONS),
        taus=(1.0,) if tiny else (0.9, 1.0, 1.1, 1.2, 1.3),
        interp_temps=(1.0,) if tiny else (0.25, 0.5, 1, 2),
        lambdas=(0, 0.3) if tiny else (0.1, 0.2, 0.3, 0.4, 0.5),
        cache_lambdas=(0, 0.2) if tiny else (0, 0.05, 0.1, 0.2, 0.3),
        cache_thetas=(0.3,) if tiny else (0.03, 0.1, 0.3, 1), max_widen=0 if tiny else 1,
        books_tokens=tuple(BOOKS_TOY_TOKENS.values()) if tiny else
        tuple(SPLIT_TOKENS["books"][split] for split in ("train", "valid", "test")),
        paper=preset, gpus=gpus, dstore_shards=dstore_shards or gpus,
        context_window=model.eval_context_window,
        break_mode="complete" if model.eval_break_mode_complete else "")


# -- what each step costs, for --dry-run (rough: the paper's speeds, standard memory formulas) --

# the paper's speeds of the 247M model on one RTX 3090 (Table 2): the LM (with local / long
# memory), with the IVFPQ datastore (FAISS on 32 CPUs), with exact distances (†)
PAPER_SPEEDS = {"wt103-247m": {"lm": 3600, "ext": 300, "exact": 50}}


def _gb(size: float) -> str:
    return f"{size / 1e9:,.1f} GB"


def _activations(model: PaperModel, segments: int, grad: bool) -> float:
    """Bytes of a transformer's fp16 activations for ``segments`` of L tokens (Korthikanti et al.
    2022: 34·s·b·h + 5·a·s²·b per layer with backward; about a tenth without)."""
    s, h = model.tokens_per_sample, model.key_dim
    per_layer = segments * (34 * s * h + 5 * model.heads * s * s)
    return model.layers * per_layer if grad else 2 * per_layer


def _hours(tokens: float, rate: float) -> str:
    hours = tokens / rate / 3600
    time = f"{hours:,.0f} GPU-hours" if hours >= 10 else f"{hours:.1f} GPU-hours" if hours >= 1 \
        else f"{hours * 60:.0f} GPU-minutes"
    return f"roughly {time} (the paper's {rate:,} tokens/s on an RTX 3090)"


def training_note(preset: str, plan: Dict) -> str:
    model = PAPER_MODELS[preset]
    tokens = model.max_update * plan["tokens_per_update"]
    rate = PAPER_SPEEDS.get(preset, {}).get("lm")
    cost = (_hours(tokens * TRAINING_PASSES, rate) + f" x {TRAINING_PASSES} passes per training "
            "token" if rate else "the paper gives no speed for this model")
    gpu = model.params * 16 + _activations(model, plan["segments_per_gpu"], grad=True)
    return (f"the authors' {plan['authors_run']} hyperparameters: {plan['gpus']} GPU(s) x "
            f"{plan['segments_per_gpu']} segments x update-freq {plan['update_freq']} = "
            f"{plan['tokens_per_update']:,} tokens per update; {model.max_update:,} updates = "
            f"{tokens / 1e9:.1f}B tokens; {cost}; GPU memory about {_gb(gpu)} each (weights, "
            "gradients and optimizer state at 16 bytes a parameter, fp16 activations)")


def eval_note(preset: str, tokens: int, memory: str, long_memory_size: int, exact=False,
              index_bytes: int = 0, what: str = "") -> str:
    """GPU-hours and memory of one pass over ``tokens`` (an evaluation, a tuning pass or a
    datastore shard)."""
    from trime.glue.vocab import EVAL_CHUNK_ELEMENTS

    model = PAPER_MODELS[preset]
    speeds = PAPER_SPEEDS.get(preset, {})
    rate = speeds.get("exact" if exact else "ext" if "ext" in memory else "lm")
    cost = _hours(tokens, rate) if rate else "the paper gives no speed for this model"
    gpu = (model.params * 2 + _activations(model, 1, grad=False) + EVAL_CHUNK_ELEMENTS * 4
           + ((long_memory_size or 0) * model.key_dim * 2 if "long" in memory else 0))
    host = f"; host memory about {_gb(index_bytes)} for the index" if index_bytes else ""
    return (f"{what}{tokens:,} tokens; {cost}; GPU memory about {_gb(gpu)} (fp16 weights, one "
            f"segment, a vocabulary chunk of {EVAL_CHUNK_ELEMENTS:,} scores"
            + (", the long memory's keys" if "long" in memory else "") + f"){host}")


def datastore_note(preset: str, tokens: int, shards: int) -> str:
    model = PAPER_MODELS[preset]
    keys, values = tokens * model.key_dim * 2, tokens * 4
    return (f"{shards} shard(s) of {tokens:,} keys of {model.key_dim} in all: keys {_gb(keys)} + "
            f"values {_gb(values)} on disk (twice while the shards are merged); "
            + eval_note(preset, -(-tokens // shards), "local", 0, what="each shard "))


def index_bytes(tokens: int) -> int:
    return tokens * (64 + 8)  # a 64-byte code and an 8-byte id per key


def index_note(preset: str, tokens: int) -> str:
    model = PAPER_MODELS[preset]
    sample = 1_000_000 * model.key_dim * 4
    return (f"IVFPQ over {tokens:,} keys: {_gb(index_bytes(tokens))} on disk and in host memory "
            f"while filled, plus {_gb(sample)} for the 1M-key training sample; on GPU with "
            "faiss-gpu (pip install trime[gpu]), resumable (--checkpoint-keys)")
