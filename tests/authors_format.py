"""Checkpoints written as the TRIME authors' fairseq-0.9 fork writes them, at tiny sizes.

``tests/data/authors_layout.json`` (made by ``scripts/authors_layout.py`` from the fork's own
argument parser and model) holds, for each released run, the ``args`` Namespace the fork saves
and, for each architecture, its state-dict keys and shapes, its tied tensors and the
log-probabilities its model gives ``tokens`` under the deterministic weights of
``scripts/authors_layout.py``'s ``tiny_weights``. A
checkpoint here is that Namespace (with the tiny sizes), fp16 tensors on storages tagged
``cuda:0`` (a GPU-trained model saved as is), the fork's ``optimizer_history`` and
``extra_state``, and no ``cfg``.
"""

import argparse
import importlib.util
import json
import os
from collections import OrderedDict

import torch

_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                       "authors_layout.py")
_spec = importlib.util.spec_from_file_location("authors_layout", _SCRIPT)
_layout_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_layout_script)
tiny_weights = _layout_script.tiny_weights  # the weights the recorded log-probabilities are for

LAYOUT = json.load(open(os.path.join(os.path.dirname(__file__), "data", "authors_layout.json")))
RUNS = sorted(LAYOUT["runs"])
CRITERION_CLASSES = {"trime_loss": "TrimeLoss", "trime_long_loss": "TrimeLongLoss",
                     "trime_long_loss_same_device": "TrimeLongLoss_same_device",
                     "trime_ext_loss": "TrimeExtLoss"}

_tag_as_cuda = False


def _cuda_tag(storage):
    return "cuda:0" if _tag_as_cuda else None


# checked before torch's own taggers (cpu: 10, cuda: 20); loading with a map_location never
# reaches the deserializer
torch.serialization.register_package(0, _cuda_tag, lambda storage, location: None)


def model_of(run):
    return LAYOUT["models"][LAYOUT["runs"][run]["arch"]]


def authors_args(run, data="data-bin/wikitext-103"):
    """The Namespace the fork saved for ``run``, at the tiny size."""
    fields = dict(LAYOUT["runs"][run])
    fields.update(model_of(run)["overrides"])
    fields["data"] = data
    return argparse.Namespace(**fields)


def authors_state_dict(run):
    model = model_of(run)
    values = tiny_weights(model["tensors"], model["tied"])
    state = OrderedDict()
    for key, shape in model["tensors"].items():
        if key in values:
            state[key] = values[key]
        elif key in model["versions"]:
            version = torch.tensor(model["versions"][key])
            state[key] = version.half() if version.is_floating_point() else version
        else:  # _float_tensor buffers
            state[key] = torch.zeros(shape, dtype=torch.float16)
    return state


def write_checkpoint(path, run, args=None):
    """A checkpoint of ``run`` (e.g. "wiki103-150M-trime_long") in the fork's layout."""
    global _tag_as_cuda
    args = args or authors_args(run)
    state = {
        "args": args,
        "model": authors_state_dict(run),
        "optimizer_history": [{"criterion_name": CRITERION_CLASSES[args.criterion],
                               "optimizer_name": "FP16Optimizer",
                               "lr_scheduler_state": {"best": 3.1},
                               "num_updates": 1000}],
        "extra_state": {"train_iterator": {"epoch": 3, "iterations_in_epoch": 12, "shuffle": True},
                        "val_loss": 3.1, "best": 3.1,
                        "metrics": OrderedDict(train=[("loss", 0, "AverageMeter",
                                                       {"val": 3.2, "sum": 32.0, "count": 10})])},
        "last_optimizer_state": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}],
                                 "loss_scale": 128.0},
    }
    _tag_as_cuda = True
    try:
        torch.save(state, path)
    finally:
        _tag_as_cuda = False
    return path


def _words(tokens):
    """Token ids (after the 4 specials) as the words w{id-4} of fairseq_utils.write_dictionary."""
    return " ".join(f"w{t - 4}" for t in tokens)


def authors_data(root, run_name):
    """A data-bin whose dictionary has the run's tiny vocabulary; test = the recorded line.
    Returns (data folder, dictionary)."""
    from console import run
    from fairseq_utils import write_dictionary

    model = model_of(run_name)
    dictionary = write_dictionary(root / "dict", num_words=model["vocab"] - 4)
    line = _words(model["tokens"][1:-1])  # the recorded tokens: eos, the line, eos
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    words = [f"w{i}" for i in range(model["vocab"] - 4)]
    (raw / "train.txt").write_text("\n".join(" ".join(words[i:] + words[:i]) for i in range(8)) + "\n")
    (raw / "valid.txt").write_text(line + "\n" + " ".join(reversed(words)) + "\n")
    (raw / "test.txt").write_text(line + "\n")
    run("fairseq-preprocess", "--only-source", "--srcdict", root / "dict" / "dict.txt",
        "--trainpref", raw / "train.txt", "--validpref", raw / "valid.txt",
        "--testpref", raw / "test.txt", "--destdir", root / "bin", "--workers", 1)
    return root / "bin", dictionary


# --- the authors' translation fork (fairseq 0.10.1), tests/data/authors_mt_layout.json ---

MT_LAYOUT = json.load(open(os.path.join(os.path.dirname(__file__), "data", "authors_mt_layout.json")))
MT_MODEL = MT_LAYOUT["models"]["transformer_iwslt_de_en"]


def write_mt_checkpoint(path, run, data):
    """A checkpoint of ``run`` ("iwslt14-trime" / "iwslt14-vanilla") as the MT fork saves it: the
    ``args`` Namespace (no ``cfg``), fp32 tensors on CPU storages (its save_state moves every
    tensor to the CPU as fp32), the tied embedding and output projection as two copies."""
    fields = dict(MT_LAYOUT["runs"][run], **MT_MODEL["overrides"], data=str(data))
    values = tiny_weights(MT_MODEL["tensors"], MT_MODEL["tied"])
    state = OrderedDict()
    for key, shape in MT_MODEL["tensors"].items():
        if key in values:
            state[key] = values[key].float().clone()
        elif key in MT_MODEL["versions"]:
            state[key] = torch.tensor(MT_MODEL["versions"][key])
        else:  # _float_tensor buffers
            state[key] = torch.zeros(shape)
    torch.save({
        "args": argparse.Namespace(**fields), "model": state,
        "optimizer_history": [{"criterion_name": MT_LAYOUT["checkpoint"]["criterion_name"][run],
                               "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": 33.1}, "num_updates": 1000}],
        "extra_state": {"train_iterator": {"version": 2, "epoch": 51, "iterations_in_epoch": 0,
                                           "shuffle": True},
                        "val_loss": 33.1, "best": 33.1, "metrics": {}, "previous_training_time": 1.0},
        "last_optimizer_state": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
    }, path)
    return path


def authors_mt_data(root, train_pairs=80):
    """A de-en data-bin whose dictionaries have the tiny model's vocabularies: valid and test
    hold the recorded pair; train has ``train_pairs`` random pairs (enough target tokens for
    an IVFPQ index with 8-bit codes)."""
    import random

    from console import run

    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "dict.de.txt").write_text("".join(f"de{n} 1\n" for n in range(MT_MODEL["source_vocab"] - 4)))
    (raw / "dict.en.txt").write_text("".join(f"en{n} 1\n" for n in range(MT_MODEL["target_vocab"] - 4)))
    recorded = (" ".join(f"de{t - 4}" for t in MT_MODEL["source"][:-1]),
                " ".join(f"en{t - 4}" for t in MT_MODEL["target"][:-1]))
    rng = random.Random(0)
    pairs = {"train": [tuple(" ".join(f"{lang}{rng.randrange(vocab - 4)}"
                                      for _ in range(rng.randint(3, 8)))
                             for lang, vocab in (("de", MT_MODEL["source_vocab"]),
                                                 ("en", MT_MODEL["target_vocab"])))
                       for _ in range(train_pairs)],
             "valid": [recorded, ("de1 de2 de3", "en1 en2")],
             "test": [recorded, ("de7 de8 de9 de10", "en5 en6 en7")]}
    for split, lines in pairs.items():
        for side, lang in enumerate(("de", "en")):
            (raw / f"{split}.{lang}").write_text("\n".join(pair[side] for pair in lines) + "\n")
    run("fairseq-preprocess", "-s", "de", "-t", "en", "--srcdict", raw / "dict.de.txt",
        "--tgtdict", raw / "dict.en.txt", "--trainpref", raw / "train", "--validpref",
        raw / "valid", "--testpref", raw / "test", "--destdir", root / "bin", "--workers", 1)
    return root / "bin"
