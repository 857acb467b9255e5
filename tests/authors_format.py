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
