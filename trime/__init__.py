"""trime: TRIME (Zhong, Lei & Chen, EMNLP 2022) as a fairseq --user-dir plugin.

fairseq imports this package by its folder name when given ``--user-dir``;
importing it registers ``--task trime_lm`` and ``--criterion trime_loss``
(``trime.lm``), ``--task trime_translation`` and ``--criterion trime_mt_loss`` (``trime.mt``). The pure math (``trime.core``) and external memory
(``trime.extmem``) import without fairseq.
"""

import os

__version__ = "0.1.0"
USER_DIR = os.path.dirname(os.path.abspath(__file__))

try:
    import fairseq  # noqa: F401
except ImportError:  # the pure math stays importable without fairseq
    pass
else:
    from trime.glue.checkpoints import allow_namespace_in_checkpoints

    allow_namespace_in_checkpoints()  # translation checkpoints under torch >= 2.6
    from trime import lm, mt  # noqa: F401  (register with fairseq)
