"""``fairseq-preprocess`` run once per output folder, for the ``trime-prepare-*`` commands.

``DEST/preprocess.done`` marks a finished run: a rerun skips it, and a folder left by an
interrupted run (no marker) is removed and binarised again.
"""

import os
import shutil
import subprocess
import sys


def fairseq_preprocess(arguments, destdir: str) -> str:
    """``fairseq-preprocess ARGUMENTS --destdir DESTDIR`` unless already done; returns DESTDIR."""
    done = os.path.join(destdir, "preprocess.done")
    if os.path.exists(done):
        return destdir
    command = os.path.join(os.path.dirname(sys.executable), "fairseq-preprocess")
    if not os.path.exists(command):
        command = "fairseq-preprocess"
    if os.path.exists(destdir):  # left by an interrupted fairseq-preprocess
        shutil.rmtree(destdir)
    subprocess.run([command, *map(str, arguments), "--destdir", destdir], check=True)
    open(done, "w").close()
    return destdir
