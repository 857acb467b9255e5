"""Machine translation with TRIME in fairseq (paper §5.4): ``--task trime_translation``
(``task``) and ``--criterion trime_mt_loss`` (``criterion``). Importing this package
registers both with fairseq."""

from trime.mt import criterion, task  # noqa: F401  (register with fairseq)
