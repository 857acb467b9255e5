"""Every evaluation option, declared once (default, type, help), and its checked form, with no
fairseq: ``EvalOptions`` declares them as dataclass fields, ``EvalSettings`` (the same fields)
checks them with errors that name the flags and fills the defaults that depend on the scoring
(``KNN_DEFAULTS``).

fairseq reads the declarations as they are: ``--task trime_lm``'s config inherits ``EvalOptions``
and ``--task trime_translation``'s copies some (``declared_fields``), so ``fairseq-eval-lm`` and
``fairseq-generate`` parse these flags with exactly these defaults; a choice is a ``choice_enum``,
an Enum whose members compare equal to their names, as fairseq's ``ChoiceEnum``.
``add_argparse_options`` offers some of them to a console script with the same declaration
(``trime-memory-curve``); ``trime-options`` lists them (``docs/options.md``).
"""

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Optional

EVAL_MEMORIES = ("none", "local", "local,long", "ext", "local,ext", "local,long,ext")
EVAL_SCORINGS = ("trime", "cache", "knnlm")
KNN_DEFAULTS = {  # (similarity, lambda, temperature) when --knn-sim / --knn-lambda / --knn-temp are not given
    "knnlm": ("l2", 0.25, 1.0),  # Khandelwal et al. (2020)
    "trime": ("ip", 0.3, 1.0),   # TRIME's sim (§3); λ = 0.3 as in the authors' release; tune τ'
}


# The decoder representation a key is made of, where there is a choice (translation's --mt-key for
# the loss, the datastore and decoding; the LM continuous cache's --cache-key):
#   final          = the decoder output that feeds the output projection (after the final
#                    LayerNorm): Grave et al.'s cache, the authors' MT code and most kNN-MT code;
#   last-ffn-input = g(c), the input of the last decoder layer's FFN (paper §3, Appendix C).
DECODER_KEYS = ("final", "last-ffn-input")


class _Choice(enum.Enum):
    """A member of a ``choice_enum``: its value is its name, and it equals that string."""

    def __str__(self):
        return self.value

    def __eq__(self, other):
        return self.value == other if isinstance(other, str) else super().__eq__(other)

    def __hash__(self):
        return hash(self.value)


def choice_enum(choices):
    """An Enum of these string choices (a config field's type: argparse offers them as choices,
    omegaconf accepts them by name)."""
    return _Choice("Choices", {choice: choice for choice in choices})


@dataclass
class EvalOptions:
    eval_memory: choice_enum(list(EVAL_MEMORIES)) = field(
        default="none",
        metadata={"help": "memory used when scoring: none = the plain LM distribution; local = "
                  "the earlier tokens of the same input (context window included); local,long = "
                  "also a FIFO of the last --long-memory-size scored tokens of the document before "
                  "the input (paper §4.2); ...,ext = also the --knn-k nearest entries of the "
                  "datastore --dstore (Eq. 7), then Eq. 8-9; ext alone = the datastore only"},
    )
    memory_temp: float = field(
        default=1.0,
        metadata={"help": "temperature τ of Eq. 6; divides the memory logits only (at evaluation; "
                  "with --task trime_translation also in training, Eq. 5: the authors' IWSLT "
                  "recipe uses 10)"},
    )
    long_memory_size: int = field(
        default=12288,
        metadata={"help": "S, scored tokens kept in the long-memory FIFO with --eval-memory "
                  "local,long (paper: 12,288 for the 247M model, 15,000 for 150M)"},
    )
    long_memory_reset: choice_enum(["document", "never"]) = field(
        default="document",
        metadata={"help": "empty the long-memory FIFO when a new document starts (see "
                  "--doc-boundary), or never (the authors' evaluation of the concatenated stream)"},
    )
    eval_scoring: choice_enum(list(EVAL_SCORINGS)) = field(
        default="trime",
        metadata={"help": "how memory enters the distribution: trime = Eq. 6 (joint softmax, "
                  "--memory-temp), with ext memory followed by Eq. 8-9 (--knn-lambda, "
                  "--knn-temp); cache = continuous cache (Grave et al. 2017), "
                  "(1-λ) p_LM + λ p_cache, for models trained without TRIME; knnlm = kNN-LM "
                  "(Khandelwal et al. 2020), (1-λ) p_LM + λ p_kNN, with --eval-memory ext; with "
                  "--eval-memory local,ext or local,long,ext: kNN-LM + continuous cache, "
                  "(1-λ_c)[(1-λ) p_LM + λ p_kNN] + λ_c p_cache (--cache-lambda = λ_c)"},
    )
    cache_lambda: float = field(
        default=0.1,
        metadata={"help": "λ of the continuous cache (--eval-scoring cache, or knnlm with span "
                  "memory), in [0, 1); tune on valid"})
    cache_theta: float = field(
        default=0.3,
        metadata={"help": "θ of the continuous cache: p_cache ∝ exp(θ h·h_j), > 0; tune on valid"})
    cache_key: choice_enum(list(DECODER_KEYS)) = field(
        default="final",
        metadata={"help": "representation h of the continuous cache: final = the decoder's output "
                  "features (Grave et al.), last-ffn-input = g(c), TRIME's key"},
    )
    dstore: Optional[str] = field(
        default=None,
        metadata={"help": "external memory for --eval-memory ...,ext: a datastore folder written "
                  "by --save-dstore and indexed with trime-build-index (index.{--knn-sim}.faiss)"},
    )
    knn_k: int = field(
        default=1024,
        metadata={"help": "K, datastore entries retrieved per token (at most the datastore size)"})
    knn_nprobe: int = field(
        default=32, metadata={"help": "inverted lists searched by an IVFPQ index (ignored by Flat)"})
    knn_device: choice_enum(["auto", "cpu", "faiss-gpu", "torch"]) = field(
        default="auto",
        metadata={"help": "where the datastore is searched: cpu = the FAISS index on CPU; faiss-gpu "
                  "= the index copied to the GPU (pip install trime[gpu]; fp16 lookup tables); "
                  "torch = exact search of the fp16 keys held in the model's device memory (no "
                  "index needed; small datastores); auto = torch on CUDA when the keys take <= 1/4 "
                  "of free GPU memory, else faiss-gpu if installed, else cpu"},
    )
    knn_sim: Optional[choice_enum(["ip", "l2"])] = field(
        default=None,
        metadata={"help": "similarity of retrieved entries: ip = g·g'/√d (TRIME's sim) or l2 = "
                  "-‖g-g'‖² (kNN-LM's); default: ip with --eval-scoring trime, l2 with knnlm; the "
                  "datastore needs an index built with the same trime-build-index --metric"},
    )
    knn_lambda: Optional[float] = field(
        default=None,
        metadata={"help": "λ in [0, 1): weight of the memory distribution (Eq. 9 for trime; "
                  "kNN-LM's λ); default: 0.3 for trime, 0.25 for knnlm; tune with trime-tune"},
    )
    knn_temp: Optional[float] = field(
        default=None,
        metadata={"help": "temperature of the memory distribution: τ' of Eq. 8 (trime) or T of "
                  "kNN-LM; default 1; tune with trime-tune"},
    )
    knn_exact_scores: bool = field(
        default=False,
        metadata={"help": "recompute the similarities of the retrieved entries from the stored "
                  "keys instead of the index's approximate (quantised) ones (the paper's † rows)"},
    )
    knn_interp_memory: choice_enum(["eval", "ext"]) = field(
        default="eval",
        metadata={"help": "memory of P' in Eq. 8: eval = M_eval (local, long and retrieved "
                  "entries, as in the paper), ext = the retrieved entries only"},
    )
    save_dstore: Optional[str] = field(
        default=None,
        metadata={"help": "save a datastore of the evaluated split to this new folder: the key "
                  "g(c) (fp16) and next token (int32) of every scored token, row i = token i of "
                  "the split; written to DIR.partial and renamed when complete"},
    )


def declared_fields(config_class, names, defaults=None, narrowed=None):
    """(name, type, field) copies of these fields' declarations (default, help, choices), for
    ``dataclasses.make_dataclass``: a config offering some of them declares nothing again but
    the ``defaults`` it changes ({name: value}) and the options it ``narrowed`` ({name: (type
    with fewer choices, the help that says what they mean there)})."""
    by_name = {f.name: f for f in dataclasses.fields(config_class)}
    defaults, narrowed = defaults or {}, narrowed or {}
    if (set(defaults) | set(narrowed)) - set(names):
        raise ValueError(f"changes for undeclared fields: {sorted((set(defaults) | set(narrowed)) - set(names))}")
    return [(name, narrowed[name][0] if name in narrowed else by_name[name].type,
             field(default=defaults.get(name, by_name[name].default),
                   metadata=dict(by_name[name].metadata, **({"help": narrowed[name][1]}
                                                           if name in narrowed else {}))))
            for name in names]


def option_names():
    """The EvalOptions fields that are options (not fairseq's internal ``_name``)."""
    return [f.name for f in dataclasses.fields(EvalOptions) if not f.name.startswith("_")]


def _plain(value):
    """A config value as a plain Python value (fairseq hands ChoiceEnum members or strings)."""
    return value.value if isinstance(value, enum.Enum) else value


@dataclass
class EvalSettings(EvalOptions):
    """The evaluation options, checked, with the scoring-dependent defaults filled in."""

    def __post_init__(self):
        for name in option_names():
            setattr(self, name, _plain(getattr(self, name)))
        if self.eval_memory not in EVAL_MEMORIES:
            raise ValueError(f"--eval-memory must be one of {EVAL_MEMORIES}, got {self.eval_memory!r}")
        if self.eval_scoring not in EVAL_SCORINGS:
            raise ValueError(f"--eval-scoring must be one of {EVAL_SCORINGS}, got {self.eval_scoring!r}")
        if self.memory_temp <= 0:
            raise ValueError(f"--memory-temp must be > 0, got {self.memory_temp}")
        if self.long_memory_size < 0:
            raise ValueError(f"--long-memory-size must be >= 0 (tokens kept in the FIFO), "
                             f"got {self.long_memory_size}")
        if self.eval_scoring == "cache" and self.eval_memory == "none":
            raise ValueError("--eval-scoring cache needs a memory to cache: add --eval-memory local "
                             "(or local,long)")
        if self.uses_cache and not 0 <= self.cache_lambda < 1:
            raise ValueError(f"--cache-lambda must be in [0, 1), got {self.cache_lambda}")
        if self.uses_cache and self.cache_theta <= 0:
            raise ValueError(f"--cache-theta must be > 0, got {self.cache_theta}")
        if self.eval_scoring == "cache" and self.uses_ext:
            raise ValueError("--eval-scoring cache does not use external memory: for a datastore "
                             "with a model trained without TRIME use --eval-scoring knnlm (with "
                             "--eval-memory local,ext: kNN-LM + continuous cache)")
        if self.eval_scoring == "knnlm" and not self.uses_ext:
            raise ValueError("--eval-scoring knnlm (kNN-LM) interpolates the LM with the external "
                             "datastore: use --eval-memory ext, or local,ext / local,long,ext for "
                             f"kNN-LM + continuous cache (got {self.eval_memory!r})")
        if self.uses_ext and not self.dstore:
            from trime.extmem.datastore import HOW_TO_BUILD

            raise ValueError(f"--eval-memory {self.eval_memory} needs --dstore DIR, an indexed "
                             f"datastore: {HOW_TO_BUILD}")
        if self.dstore and not self.uses_ext:
            raise ValueError(f"--dstore is only used with external memory: add ext to --eval-memory "
                             f"(e.g. --eval-memory local,long,ext), got {self.eval_memory!r}")
        if self.uses_ext:
            sim, lam, temp = KNN_DEFAULTS[self.eval_scoring]
            self.knn_sim = self.knn_sim or sim
            self.knn_lambda = lam if self.knn_lambda is None else self.knn_lambda
            self.knn_temp = temp if self.knn_temp is None else self.knn_temp
            if self.knn_sim not in ("ip", "l2"):
                raise ValueError(f"--knn-sim must be ip or l2, got {self.knn_sim!r}")
            if not 0 <= self.knn_lambda < 1:
                raise ValueError(f"--knn-lambda must be in [0, 1), got {self.knn_lambda}")
            if self.knn_temp <= 0:
                raise ValueError(f"--knn-temp must be > 0, got {self.knn_temp}")
            if self.knn_k < 1 or self.knn_nprobe < 1:
                raise ValueError(f"--knn-k and --knn-nprobe must be >= 1, got {self.knn_k} and "
                                 f"{self.knn_nprobe}")
            if self.knn_interp_memory not in ("eval", "ext"):
                raise ValueError(f"--knn-interp-memory must be eval or ext, got {self.knn_interp_memory!r}")
        elif (self.knn_sim, self.knn_lambda, self.knn_temp) != (None, None, None) or self.knn_exact_scores:
            raise ValueError("--knn-sim / --knn-lambda / --knn-temp / --knn-exact-scores apply to "
                             "external memory only: add ext to --eval-memory and give --dstore")

    @classmethod
    def from_options(cls, config, **overrides) -> "EvalSettings":
        """Settings from any parsed config or namespace holding the EvalOptions fields, by name."""
        return cls(**{**{name: getattr(config, name) for name in option_names()}, **overrides})

    def replace(self, **changes) -> "EvalSettings":
        """A copy with some options changed, checked again (the --knn-* values already filled
        in from KNN_DEFAULTS stay as they are)."""
        return dataclasses.replace(self, **changes)

    @property
    def uses_ext(self) -> bool:
        return "ext" in self.eval_memory.split(",")

    @property
    def uses_cache(self) -> bool:
        """The continuous cache over the span memory: --eval-scoring cache, or kNN-LM + cache."""
        return self.eval_scoring == "cache" or (self.eval_scoring == "knnlm"
                                                and self.span_memory != "none")

    @property
    def span_memory(self) -> str:
        """The memory scored from the input itself: none | local | local,long."""
        return ",".join(m for m in self.eval_memory.split(",") if m != "ext") or "none"

    @property
    def reset_at_documents(self) -> bool:
        return self.long_memory_reset == "document"

    def describe(self) -> str:
        text = f"eval memory = {self.eval_memory}"
        if "long" in self.eval_memory:
            text += (f" (FIFO of {self.long_memory_size} tokens, "
                     f"{'reset at each document' if self.reset_at_documents else 'never reset'})")
        if self.uses_ext:
            text += (f", datastore {self.dstore} (K = {self.knn_k}, nprobe = {self.knn_nprobe}, "
                     f"sim = {self.knn_sim}{', exact scores' if self.knn_exact_scores else ''}, "
                     f"search on {self.knn_device})")
        if self.save_dstore:
            text += f", saving a datastore to {self.save_dstore}"
        if self.eval_scoring == "cache":
            return text + (f", continuous cache lambda = {self.cache_lambda}, "
                           f"theta = {self.cache_theta}, h = {self.cache_key}")
        if self.eval_scoring == "knnlm":
            text += f", kNN-LM lambda = {self.knn_lambda}, T = {self.knn_temp}"
            if self.uses_cache:
                text += (f", then continuous cache lambda = {self.cache_lambda}, "
                         f"theta = {self.cache_theta}, h = {self.cache_key}")
            return text
        if self.uses_ext:
            over = 'M_eval' if self.knn_interp_memory == 'eval' else 'the retrieved entries'
            text += (f", then (1-lambda) P + lambda P' with lambda = {self.knn_lambda}, "
                     f"tau' = {self.knn_temp} over {over}")
        return text + f", tau = {self.memory_temp}"


def flag(name: str) -> str:
    """The command-line flag of a dataclass field: long_memory_size -> --long-memory-size."""
    return "--" + name.replace("_", "-")


def choices_of(f: dataclasses.Field):
    """The allowed values of a ChoiceEnum field (or Optional[ChoiceEnum]), else None."""
    kind = f.type
    for arg in getattr(kind, "__args__", ()):  # Optional[...]
        if isinstance(arg, type) and issubclass(arg, enum.Enum):
            kind = arg
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return [member.value for member in kind]
    return None


def add_argparse_options(parser, config_class, names):
    """Add these fields of ``config_class`` to an argparse parser, with their declared
    default, type, choices and help (so a console script never repeats a declaration)."""
    by_name = {f.name: f for f in dataclasses.fields(config_class)}
    for name in names:
        f = by_name[name]
        help_text = f.metadata.get("help", "").replace("%", "%%")
        choices = choices_of(f)
        if f.type is bool:
            parser.add_argument(flag(name), action="store_true", help=help_text)
            continue
        value_type = str if choices else next(
            (t for t in (int, float, str) if f.type is t or t in getattr(f.type, "__args__", ())), str)
        parser.add_argument(flag(name), type=value_type, default=f.default, choices=choices,
                            help=help_text)
