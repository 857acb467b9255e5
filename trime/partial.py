"""The work an interrupted command had done, kept in one file between runs so that the same
command run again goes on where it stopped (``trime-tune``'s scoring pass, ``trime-memory-curve``'s
sizes). The file belongs to one command: a file another command (other options, another
checkpoint) left behind is not used. Written with ``torch.save``, read back with
``weights_only=True`` (tensors, numbers, strings, lists and dicts only)."""

import logging
import os

from trime.files import written_whole

logger = logging.getLogger("trime.partial")


class Partial:
    """``path``: where the work so far is kept; ``fingerprint``: the command it belongs to
    (``trime.cli.parsing.command_fingerprint``)."""

    def __init__(self, path: str, fingerprint: str):
        self.path, self.fingerprint = path, fingerprint

    def load(self):
        """The state saved by an interrupted run of the same command; None when there is none."""
        import torch

        if not os.path.exists(self.path):
            return None
        saved = torch.load(self.path, weights_only=True)
        if not isinstance(saved, dict) or saved.get("fingerprint") != self.fingerprint or "state" not in saved:
            logger.warning(f"{self.path} is from another command (other options or checkpoint, or "
                           "another trime version): starting from the beginning")
            return None
        return saved["state"]

    def save(self, state: dict) -> None:
        import torch

        with written_whole(self.path) as temporary:
            torch.save({"fingerprint": self.fingerprint, "state": state}, temporary)

    def remove(self) -> None:
        """The command finished: its outputs replace the partial file."""
        if os.path.exists(self.path):
            os.remove(self.path)
