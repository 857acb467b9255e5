"""trime: TRIME (Zhong, Lei & Chen, EMNLP 2022) as a fairseq --user-dir plugin.

Importing ``trime`` (or ``trime.core``, ``trime.extmem``) imports no fairseq and registers
nothing. fairseq registers ``--task trime_lm`` / ``trime_translation`` and ``--criterion
trime_loss`` / ``trime_mt_loss`` when it loads the user dir, ``USER_DIR`` (the package
``trime_fairseq`` beside this one; ``trime-user-dir`` prints it), or when a fairseq-side
module (``trime.lm``, ``trime.mt``) is imported directly.
"""

import os

__version__ = "0.1.0"
USER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "trime_fairseq")
