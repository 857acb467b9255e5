"""Progress of long work as log lines: how far, how fast, how long still.

A log line every ``every`` seconds (and one at the end) reads the same on a terminal and in a
log file, where fairseq's tqdm bars fall back to nothing (``fairseq-eval-lm`` logs no progress
at all when its output is redirected). Used by the evaluation of a split
(``fairseq-eval-lm --task trime_lm``, ``trime-memory-curve``).
"""

import logging
import time

EVERY_SECONDS = 30.0


def duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '1 h 07 min'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def logged_progress(items, total: int, what: str, logger: logging.Logger, size=None,
                    unit: str = "tokens", every: float = EVERY_SECONDS, clock=time.monotonic):
    """Yield ``items``; every ``every`` seconds log how many of ``total`` are done, the rate in
    ``unit`` (``size(item)`` of each item done; items themselves without ``size``) and the time
    left; at the end, the total and the mean rate.

    An item counts as done when the next one is asked for (the consumer works on it between
    two requests), e.g. ``INFO | TRIME: scoring valid: 120 / 560 batches (21%), 45,312 tokens,
    1,530 tokens/s, 1 min 53 s left``.
    """
    start = last = clock()
    done = amount = 0
    for item in items:
        yield item
        done += 1
        amount += size(item) if size is not None else 1
        now = clock()
        if now - last >= every and done < total:
            last = now
            rate = amount / max(now - start, 1e-9)
            left = (now - start) / done * (total - done)
            logger.info(f"TRIME: {what}: {done:,} / {total:,} batches ({100 * done / total:.0f}%), "
                        f"{amount:,} {unit}, {rate:,.0f} {unit}/s, {duration(left)} left")
    elapsed = clock() - start
    logger.info(f"TRIME: {what}: {done:,} batches, {amount:,} {unit} in {duration(elapsed)} "
                f"({amount / max(elapsed, 1e-9):,.0f} {unit}/s)")
