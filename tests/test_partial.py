"""trime.partial.Partial and the command fingerprint that owns one."""

import os

import torch

from trime.cli.parsing import command_fingerprint
from trime.partial import Partial


def test_a_partial_file_is_read_back_only_by_its_own_command(tmp_path, caplog):
    path = str(tmp_path / "work.partial.pt")
    mine = Partial(path, "A")
    assert mine.load() is None
    state = {"rows": [{"scoring": "trime", "memory_size": 64, "loss": 1.5}], "scores": torch.arange(3.0)}
    mine.save(state)
    loaded = mine.load()
    assert loaded["rows"] == state["rows"] and torch.equal(loaded["scores"], state["scores"])
    assert not os.path.exists(path + ".tmp")
    assert Partial(path, "B").load() is None and "another command" in caplog.text
    torch.save({"fingerprint": "A", "batches": 3}, path)  # an older layout of the same command
    assert mine.load() is None
    mine.save(state)
    mine.remove()
    assert not os.path.exists(path) and mine.load() is None
    mine.remove()  # nothing left to remove: no error


def test_the_fingerprint_changes_with_the_words_and_the_checkpoint(tmp_path):
    checkpoint = tmp_path / "checkpoint_last.pt"
    checkpoint.write_bytes(b"12345")
    first = command_fingerprint(["data", "--taus", "1,2"], str(checkpoint))
    assert first == command_fingerprint(("data", "--taus", "1,2"), str(checkpoint))
    assert first != command_fingerprint(["data", "--taus", "1,4"], str(checkpoint))
    assert first != command_fingerprint(["data", "--taus", "1,2"], str(checkpoint), task_options=["x"])
    stat = checkpoint.stat()
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # trained further
    assert first != command_fingerprint(["data", "--taus", "1,2"], str(checkpoint))
