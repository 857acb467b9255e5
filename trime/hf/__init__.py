"""TRIME for Hugging Face ``transformers`` causal LMs (``pip install -e ".[hf]"``).

``TrimeLoss(model, memory="local")`` is the training objective of paper Eq. 5 for any
``AutoModelForCausalLM`` whose layers end with a feed-forward block: g(c) is the input of the
last layer's FFN (``trime.hf.architectures``), the memory is local, long (consecutive segments
of a document in one batch) or in-batch external (BM25 batches, §4.3), the math is
``trime.core.objective.TrimeObjective``, as for fairseq. ``trime.hf.data`` builds the batches,
``trime.hf.trainer.TrimeTrainer`` plugs the loss into ``transformers.Trainer``.

Importing this package imports neither fairseq nor transformers; the modules that need
``transformers`` import it themselves.
"""

from trime.hf.loss import TrimeLoss, TrimeLossOutput  # noqa: F401
