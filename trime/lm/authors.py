"""The names of the TRIME authors' fairseq-0.9 fork (princeton-nlp/TRIME), so that its released
LM checkpoints load in ``fairseq-eval-lm --user-dir "$(trime-user-dir)" --task trime_lm``.

A fairseq-0.9 checkpoint stores an ``argparse.Namespace`` (``args``) and no config. fairseq 0.12
turns it into one while loading (``checkpoint_utils._upgrade_state_dict`` →
``convert_namespace_to_omegaconf``), looking the architecture and the criterion up in its
registries: an unknown name is a ``KeyError`` there, before any plugin code runs. So the fix is
registration alone (plus ``argparse.Namespace`` allowed in ``torch.load``,
``trime.glue.checkpoints``):

- architectures: ``transformer_lm_wiki103`` (247M) is fairseq's own; the fork added
  ``transformer_lm_wiki103_150M`` and ``transformer_lm_enwik8``, registered here with the
  fork's defaults (a checkpoint's ``args`` hold every value; the defaults matter for a command
  line that names only the architecture). Its two unreleased additions are refused with what
  to do. Parameters, ties and final layer norm are fairseq's ``transformer_lm``: the fork adds
  no parameter for TRIME, and its key g(c) (``--knn-keytype last_ffn_input``) is trime's.
- criteria: the fork's ``trime_loss`` name is trime's own criterion; its ``trime_long_loss``,
  ``trime_long_loss_same_device`` and ``trime_ext_loss`` are registered so a checkpoint's
  config converts; used for training, they name the trime options of the same objective.

Checkpoint tensors are fp16 on storages tagged ``cuda:0``: fairseq loads them with
``map_location="cpu"`` and ``load_state_dict`` copies them into the model's dtype.
"""

from dataclasses import dataclass

from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.models import register_model_architecture
from fairseq.models.transformer_lm import transformer_lm_big
from fairseq.utils import safe_getattr

# the fork's defaults (its fairseq/models/transformer_lm.py), applied before transformer_lm_big's
# (12 layers, d 1024, FFN 4096, 16 heads), as the fork does
FORK_ARCHITECTURES = {
    # Table 3's 150M model
    "transformer_lm_wiki103_150M": dict(
        decoder_layers=16, decoder_embed_dim=410, decoder_ffn_embed_dim=2100,
        decoder_attention_heads=10, dropout=0.3, attention_dropout=0.1, activation_dropout=0.1,
        no_decoder_final_norm=False),
    # Table 4's 38M character-level model
    "transformer_lm_enwik8": dict(
        decoder_layers=12, decoder_embed_dim=512, decoder_ffn_embed_dim=2048,
        decoder_attention_heads=8, dropout=0.3, attention_dropout=0.1, activation_dropout=0.1,
        no_decoder_final_norm=False),
}
# the fork's architectures of which no checkpoint was released
UNRELEASED_ARCHITECTURES = ("transformer_lm_wiki103_small", "transformer_lm_wiki103_small_sm")

# the fork's criterion name: the trime options that train the same objective
FORK_CRITERIA = {
    "trime_long_loss": "--criterion trime_loss --memory long --batching consecutive",
    "trime_long_loss_same_device": "--criterion trime_loss --memory long --batching consecutive",
    "trime_ext_loss": "--criterion trime_loss --memory ext --batching bm25",
}


def _fork_architecture(name, defaults):
    def architecture(args):
        for key, value in defaults.items():
            setattr(args, key, safe_getattr(args, key, value))
        transformer_lm_big(args)

    architecture.__name__ = name
    architecture.__doc__ = f"The TRIME fork's {name}: {defaults}"
    register_model_architecture("transformer_lm", name)(architecture)


def _unreleased_architecture(name):
    def architecture(args):
        raise ValueError(
            f"--arch {name} is an architecture of the TRIME authors' fork that trime does not "
            f"register (no checkpoint of it was released); trime loads "
            f"transformer_lm_wiki103 (247M), {', '.join(FORK_ARCHITECTURES)}. Register it with "
            "its defaults beside them in trime/lm/authors.py, or evaluate it in the fork")

    architecture.__name__ = name
    register_model_architecture("transformer_lm", name)(architecture)


@dataclass
class ForkCriterionConfig(FairseqDataclass):
    """None of the fork's criterion options: a checkpoint's are dropped when it loads."""


def _fork_criterion(name, trime_options):
    def __init__(self, task):
        raise ValueError(
            f"--criterion {name} is the TRIME authors' fork's name, registered so that its "
            f"checkpoints load; trime trains the same objective with {trime_options}")

    # fairseq's registry refuses two classes of one name
    cls = type(f"Fork_{name}", (FairseqCriterion,), {"__init__": __init__, "__doc__":
                                                      f"The fork's {name}: {trime_options}"})
    register_criterion(name, dataclass=ForkCriterionConfig)(cls)


for _name, _defaults in FORK_ARCHITECTURES.items():
    _fork_architecture(_name, _defaults)
for _name in UNRELEASED_ARCHITECTURES:
    _unreleased_architecture(_name)
for _name, _options in FORK_CRITERIA.items():
    _fork_criterion(_name, _options)
