"""Language modelling with TRIME in fairseq: ``--task trime_lm`` (``task``), ``--criterion
trime_loss`` (``criterion``), the checkpoint-transparent model wrapper (``model``), the
evaluation of a split (``evaluation``), datasets with corpus offsets (``data``) and the
BM25 batch file (``bm25_batches``). Importing this package registers the task and the
criterion with fairseq, and the names of the authors' fork that its checkpoints need
(``authors``)."""

from trime.lm import authors, criterion, task  # noqa: F401  (register with fairseq)
