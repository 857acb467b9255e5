"""Silence the known noise of third-party libraries, and nothing else; timestamps on every log line.

Every fairseq command printed 17-21 lines that say nothing about the run: Hydra's deprecation
warnings (fairseq 0.12 calls ``hydra.experimental``), FAISS's loader reporting at INFO that the
AVX-512 build is absent before it loads the AVX2 one, and torch's warnings about fairseq's
``pin_memory=True`` on a CPU machine, its ``torch.cuda.amp`` calls and its attention masks.
Each is filtered by its exact message (or logger), so any other warning still shows.
``trime_fairseq`` calls this when fairseq loads the user dir; trime's console scripts call it
first thing. (fairseq's "Please install tensorboardX" line is printed while fairseq itself is
imported, before any plugin loads: installing tensorboardX, a dependency, is what silences it.)

``fairseq-eval-lm`` and ``fairseq-generate`` configure logging after importing fairseq, whose
wav2vec2 module has already called ``logging.basicConfig()``: their lines come out as
``INFO:fairseq_cli.eval_lm:...``, without the time. ``timestamped_log_lines`` gives such a
default handler the format of ``fairseq-train`` (``2026-01-01 12:00:00 | INFO | name | ...``).
"""

import logging
import warnings

# (category, regular expression matching the start of the message)
KNOWN_WARNINGS = (
    # Hydra 1.1+ on fairseq 0.12's configuration code
    (UserWarning, r"hydra\.experimental\.\w+\(\) is no longer experimental"),
    (UserWarning, r"\s*The version_base parameter is not specified"),
    (UserWarning, r"In '\w+'. Usage of deprecated keyword in package header"),
    (UserWarning, r"\s*'\w+' is validated against ConfigStore schema with the same name"),
    (UserWarning, r"\s*The strict flag in the compose API is deprecated"),
    # torch on fairseq 0.12's data loader, mixed precision and attention code
    (UserWarning, r"'pin_memory' argument is set as true but no accelerator is found"),
    (FutureWarning, r"`torch\.cuda\.amp\.\w+\(args\.\.\.\)` is deprecated"),
    (UserWarning, r"Support for mismatched key_padding_mask and attn_mask is deprecated"),
    (DeprecationWarning, r"`torch\.jit\.script` is deprecated"),  # fairseq's modules, at import
    # torch on the empty cluster projection of an adaptive softmax without tail clusters (the
    # authors' enwik8 models: cutoff = vocabulary size)
    (UserWarning, r"Initializing zero-element tensors is a no-op"),
)
FAIRSEQ_LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"
FAIRSEQ_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
# loggers that report routine events: faiss's loader tries the AVX-512 build first (INFO),
# Hydra names its job (DEBUG)
QUIET_LOGGERS = ("faiss.loader", "hydra.core.utils")


def silence_known_noise() -> None:
    """Ignore exactly the warnings of ``KNOWN_WARNINGS``; raise ``QUIET_LOGGERS`` to WARNING."""
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def timestamped_log_lines() -> None:
    """Root handlers still in logging's default format get fairseq-train's format."""
    for handler in logging.getLogger().handlers:
        if handler.formatter is not None and handler.formatter._fmt == logging.BASIC_FORMAT:
            handler.setFormatter(logging.Formatter(FAIRSEQ_LOG_FORMAT, FAIRSEQ_DATE_FORMAT))
