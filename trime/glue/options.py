"""The training options that the LM and MT losses share (``TrainingMemoryOptions``), and what
their criteria log at the start. The evaluation options are ``trime.settings`` (no fairseq)."""

from dataclasses import dataclass, field

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from trime.core.visibility import CAUSAL_CHUNK


def explain_logged_losses(logger, ce_warmup_updates: int) -> None:
    """At the start of training with memory: what ``loss`` and ``lm_loss`` are, why ``loss``
    can be the larger early on, and the paper's CE warm-up (§5.2) when none is given."""
    logger.info("TRIME: the log shows loss / ppl = the TRIME loss (Eq. 5, with memory; at validation "
                "always with memory) and lm_loss / lm_ppl = the same model's vocabulary-only "
                "distribution. Early in training, before g(c) has learnt to pick useful memory, "
                "loss can be above lm_loss.")
    if ce_warmup_updates == 0:
        logger.info("TRIME: --ce-warmup-updates 0: the paper trains with the plain LM loss for the "
                    "first ~5% of updates (§5.2), e.g. --ce-warmup-updates 50 with --max-update 1000.")


@dataclass
class TrainingMemoryOptions(FairseqDataclass):
    """What ``--criterion trime_loss`` and ``trime_mt_loss`` both offer (their configs inherit it)."""

    ce_warmup_updates: int = field(
        default=0,
        metadata={"help": "train with the plain cross-entropy (Eq. 1) for this many updates first "
                  "(paper §5.2: the first ~5%% of updates; the authors' IWSLT recipe: 5 epochs)"},
    )
    memory_chunk_size: int = field(
        default=1024,
        metadata={"help": "queries per chunk when summing over memory (at most: local and long "
                  f"memory take {CAUSAL_CHUNK} at a time, so no chunk scans the keys above the "
                  "diagonal); extra memory is O(tokens x chunk)"},
    )
    memory_kernel: ChoiceEnum(["auto", "chunked", "fused"]) = field(
        default="auto",
        metadata={"help": "what computes the memory sums: chunked = query chunks of "
                  "--memory-chunk-size (any device, the reference); fused = one Triton kernel "
                  "(CUDA; skips key blocks no query of a block may see; not with --memory-topk); "
                  "auto = fused on CUDA where it can run, else chunked (the log says why)"},
    )
    memory_across_workers: bool = field(
        default=False,
        metadata={"help": "with several data-parallel workers, every worker's loss sees the whole "
                  "global batch as memory (differentiable all-gather, exact gradients); no effect "
                  "on trime_loss's --memory local. LM: pair with --grouped-shuffling so that "
                  "workers hold consecutive segments"},
    )
