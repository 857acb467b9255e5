"""Files written whole: the content goes to a temporary path beside the target and is renamed
over it only once complete, so an interrupted command never leaves a half-written file under
the name that marks the work done (the next run writes it again)."""

import contextlib
import os


@contextlib.contextmanager
def written_whole(path: str, suffix: str = ".tmp"):
    """Yield ``path + suffix`` to write; renamed to ``path`` when the block ends without error."""
    temporary = path + suffix
    yield temporary
    os.replace(temporary, path)


@contextlib.contextmanager
def open_whole(path: str, mode: str = "w", suffix: str = ".tmp", **open_kwargs):
    """``open`` for writing through ``written_whole``: the file is closed, then renamed."""
    with written_whole(path, suffix) as temporary, open(temporary, mode, **open_kwargs) as f:
        yield f
