"""Record what the TRIME authors' machine-translation fork (fairseq 0.10.1) writes into a checkpoint.

Runs the fork's own argument parser on the training command of its ``machine_translation/
README.md`` for ``iwslt14-trime`` (``--criterion trime_mt_loss``) and for ``iwslt14-vanilla``
(the same with ``--criterion label_smoothed_cross_entropy``, as the README says), giving the
``args`` Namespace its ``checkpoint_utils.save_state`` stores (with what a 4-GPU run sets on it
before saving), the other top-level entries of that checkpoint, and builds its
``transformer_iwslt_de_en`` at a tiny size: the state-dict keys and shapes, which keys share a
tensor, its version buffers, and, with the deterministic weights of ``tiny_weights``
(``scripts/authors_layout.py``), the log-probabilities and the decoder's ``final`` features (the
keys of the authors' datastore) for one fixed sentence pair under teacher forcing. The tests read
the result, ``tests/data/authors_mt_layout.json``; they never need the fork.

    git clone https://github.com/princeton-nlp/TRIME fork   # or: fetch it, then git archive
    python scripts/authors_mt_layout.py fork/machine_translation tests/data/authors_mt_layout.json

The fork is 2022 code for Python <= 3.8 and numpy < 1.24. In this process only, before it is
imported: numpy's removed aliases (``np.float`` ...) are restored; its dataclasses with dataclass
defaults (``common: CommonParams = CommonParams()``, refused since Python 3.11) get an identity
hash; its dataclass-to-argparse code, which recognises ``Optional[X]`` only by Python 3.8's
``typing.Union[X, NoneType]`` spelling, also sees Python >= 3.9's ``typing.Optional[X]``; and
``torch_scatter`` (imported by its kNN datastore module, used only at kNN decoding) is a stub.
Nothing of the fork is copied or patched on disk: it is imported and run.
"""

import argparse
import dataclasses
import json
import os
import random
import re
import shlex
import sys
import types
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authors_layout import load_tiny_weights  # noqa: E402  the weights the recorded outputs are for

ARCH = "transformer_iwslt_de_en"
TINY_DIMS = {"encoder_layers": 2, "decoder_layers": 2, "encoder_embed_dim": 16,
             "decoder_embed_dim": 16, "decoder_input_dim": 16, "decoder_output_dim": 16,
             "encoder_ffn_embed_dim": 32, "decoder_ffn_embed_dim": 32,
             "encoder_attention_heads": 2, "decoder_attention_heads": 2}
SOURCE_VOCAB, TARGET_VOCAB = 24, 28  # fairseq Dictionary: <s>=0 <pad>=1 </s>=2 <unk>=3, then words
SOURCE = [5, 9, 20, 7, 13, 4, 2]  # a German sentence as fairseq feeds it: words then </s>
TARGET = [7, 12, 25, 9, 14, 2]  # its English side; the decoder reads </s> + TARGET[:-1]
GPUS = 4  # "Our models are trained on 4 NVIDIA RTX3090 GPUs" (README, Train TrimeMT)
VANILLA_DROPPED = ("--dist-func",)  # declared by trime_mt_loss's add_args only: refused otherwise


def python38_shims():
    """What the fork needs from a Python 3.8 / numpy < 1.24 / torch_scatter world, in-process."""
    import numpy as np

    for name, kind in (("float", float), ("int", int), ("bool", bool), ("long", int),
                       ("object", object)):
        setattr(np, name, kind)  # removed in numpy 1.24; the fork's datastore code uses them
    sys.modules.setdefault("torch_scatter", types.ModuleType("torch_scatter"))
    sys.modules["torch_scatter"].scatter = None  # fairseq/modules/knn_datastore.py:4, kNN decoding only

    # fairseq/dataclass/utils.py:127 matches str(Optional[int]) against "typing.Union[int,
    # NoneType]", Python 3.8's spelling; Python >= 3.9 writes "typing.Optional[int]"
    pattern, match = r"(typing.|^)Union\[(.*), NoneType\]$", re.match

    def py38_match(p, string, flags=0):
        if p == pattern and string.startswith("typing.Optional[") and string.endswith("]"):
            string = f"typing.Union[{string[len('typing.Optional['):-1]}, NoneType]"
        return match(p, string, flags)

    re.match = py38_match

    # fairseq/dataclass/data_class.py:574 ``common: CommonParams = CommonParams()``: Python 3.11
    # refuses an unhashable default; the fork's dataclasses get object identity hashing
    dataclass = dataclasses.dataclass

    def hashable_dataclass(cls=None, **kwargs):
        def wrap(c):
            c = dataclass(c, **kwargs)
            if c.__hash__ is None:
                c.__hash__ = object.__hash__
            return c
        return wrap if cls is None else wrap(cls)

    return dataclass, hashable_dataclass


def readme_train_argv(fork):
    """The argv after ``train.py`` of the README's "Train TrimeMT" command."""
    text = open(os.path.join(fork, "README.md")).read()
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        if "trime_mt_loss" not in block:
            continue
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "train.py" in words and "trime_mt_loss" in words:
                return words[words.index("train.py") + 1:]
    raise ValueError(f"no `train.py ... --criterion trime_mt_loss` command in {fork}/README.md")


def vanilla_argv(argv):
    """The README: "the vanilla objective can be specified by --criterion
    label_smoothed_cross_entropy"; everything else as given (--label-smoothing 0.0 included),
    less the options only trime_mt_loss declares, which the fork's parser refuses otherwise."""
    out, words = [], iter(argv)
    for word in words:
        if word in VANILLA_DROPPED:
            next(words)
            continue
        out.append("label_smoothed_cross_entropy" if word == "trime_mt_loss" else word)
    return out


def saved_args(options, argv):
    """The Namespace the fork's trainer holds when ``save_state`` stores it (rank 0 of 4 GPUs)."""
    import torch
    from fairseq import distributed_utils

    device_count = torch.cuda.device_count
    torch.cuda.device_count = lambda: GPUS  # the default --distributed-world-size (options.py:375)
    try:
        args = options.parse_args_and_arch(options.get_training_parser(), argv)
        # fairseq_cli/train.py:cli_main -> distributed_utils.call_main -> infer_init_method:
        # world size 4 > 1 -> tcp://localhost:<random 10000..20000>, distributed_num_procs = 4
        random.seed(0)
        distributed_utils.infer_init_method(args)
    finally:
        torch.cuda.device_count = device_count
    # call_main / distributed_main (distributed_utils.py:257-288): the process that saves is
    # rank 0 on device 0
    args.distributed_rank, args.device_id = 0, 0
    # TranslationTask.setup_task (tasks/translation.py:250-259): booleans, and the language pair
    # inferred from data-bin/iwslt14.tokenized.de-en (preprocessed with -s de -t en)
    from fairseq import utils

    args.left_pad_source = utils.eval_bool(args.left_pad_source)
    args.left_pad_target = utils.eval_bool(args.left_pad_target)
    args.source_lang, args.target_lang = "de", "en"
    return args


def jsonable(args):
    out = {}
    for key, value in vars(args).items():
        if isinstance(value, tuple):
            value = list(value)
        json.dumps(value)  # everything the fork's parser gives is plain data
        out[key] = value
    return out


def checkpoint_layout(run_args):
    """The top-level entries ``save_state`` writes for these runs (checkpoint_utils.py:331-371,
    trainer.py:249-264, checkpoint_utils.py:84-86)."""
    from fairseq.criterions import CRITERION_REGISTRY
    from fairseq.optim import OPTIMIZER_REGISTRY

    return {
        "args_type": "argparse.Namespace",  # pickled as is: fairseq 0.10.1 writes no "cfg"
        # "criterion" only when the criterion has parameters (neither has); "last_optimizer_state"
        # unless --no-save-optimizer-state; no "cfg" in fairseq 0.10.1
        "keys": ["args", "model", "optimizer_history", "extra_state", "last_optimizer_state"],
        "criterion_name": {run: CRITERION_REGISTRY[args.criterion].__name__
                           for run, args in run_args.items()},
        "optimizer_name": OPTIMIZER_REGISTRY["adam"].__name__,
        "optimizer_history_entry": ["criterion_name", "optimizer_name", "lr_scheduler_state",
                                    "num_updates"],
        "lr_scheduler_state": ["best"],
        "extra_state": ["train_iterator", "val_loss", "best", "metrics", "previous_training_time"],
        "train_iterator": ["version", "epoch", "iterations_in_epoch", "shuffle"],
        # utils.move_to_cpu (utils.py:109-117) on the whole dict: fp16/bf16 -> fp32, every tensor
        # on CPU; tied parameters are copied key by key, so the file holds them as separate storages
        "dtype": "float32", "storage_device": "cpu", "tied_share_storage_in_file": False,
    }


def tiny_model(args):
    import torch
    from fairseq.data import Dictionary
    from fairseq.models.transformer import TransformerModel

    def dictionary(size, prefix):
        d = Dictionary()
        for n in range(size - len(d)):
            d.add_symbol(f"{prefix}{n}")
        assert len(d) == size
        return d

    class Task:
        source_dictionary = dictionary(SOURCE_VOCAB, "de")
        target_dictionary = dictionary(TARGET_VOCAB, "en")

    tiny = argparse.Namespace(**vars(args))
    for key, value in TINY_DIMS.items():
        setattr(tiny, key, value)
    model = TransformerModel.build_model(tiny, Task())
    tensors, tied, state = load_tiny_weights(model)
    source = torch.tensor([SOURCE])
    target = torch.tensor([TARGET])
    previous = torch.tensor([[Task.target_dictionary.eos()] + TARGET[:-1]])
    with torch.no_grad():
        logits, extra = model(source, torch.tensor([len(SOURCE)]), previous)
        log_probs = model.get_normalized_probs((logits, extra), log_probs=True)[0]
        features, _ = model.decoder(previous, encoder_out=model.encoder(
            source, src_lengths=torch.tensor([len(SOURCE)])), features_only=True)
    assert torch.equal(features, extra["knn_embed"])  # what save_datastore.py stores as keys
    return {
        "source_vocab": SOURCE_VOCAB, "target_vocab": TARGET_VOCAB, "overrides": TINY_DIMS,
        "source": SOURCE, "target": TARGET, "prev_output_tokens": previous[0].tolist(),
        "tensors": tensors,
        # the version buffers' values (``_float_tensor`` buffers are uninitialised memory)
        "versions": {k: v.tolist() for k, v in state.items() if k.endswith("version")},
        "tied": tied,
        "target_log_probs": [float(x) for x in log_probs.gather(-1, target[0, :, None])[:, 0]],
        "log_probs": [[float(x) for x in row] for row in log_probs],
        # the decoder's output before the output projection, after its final LayerNorm
        # (extract_features: models/transformer.py:1111-1125), = the datastore's keys
        "final_features": [[float(x) for x in row] for row in features[0]],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fork", help="the machine_translation/ folder of princeton-nlp/TRIME")
    parser.add_argument("out", help="the JSON file to write (tests/data/authors_mt_layout.json)")
    cli = parser.parse_args()

    warnings.filterwarnings("ignore")
    dataclass, hashable_dataclass = python38_shims()
    sys.path.insert(0, os.path.abspath(cli.fork))
    dataclasses.dataclass = hashable_dataclass  # while the fork's modules are defined
    try:
        import fairseq
        from fairseq import options
    finally:
        dataclasses.dataclass = dataclass
    assert fairseq.__version__ == "0.10.1" and fairseq.__file__.startswith(
        os.path.abspath(cli.fork)), f"not the fork's fairseq: {fairseq.__file__}"

    trime_argv = readme_train_argv(cli.fork)
    argvs = {"iwslt14-trime": trime_argv, "iwslt14-vanilla": vanilla_argv(trime_argv)}
    run_args = {run: saved_args(options, argv) for run, argv in argvs.items()}
    model = tiny_model(run_args["iwslt14-trime"])
    assert all(x == x and abs(x) < 1e4 for x in model["target_log_probs"])
    with open(cli.out, "w") as f:
        json.dump({"source": "princeton-nlp/TRIME machine_translation/ (fairseq 0.10.1): "
                             "options.parse_args_and_arch on README.md's train.py command; "
                             "TransformerModel transformer_iwslt_de_en at a tiny size",
                   "notes": {"distributed_init_method": "random port in 10000..20000 per run "
                                                        "(distributed_utils.py:147)",
                             "iwslt14-vanilla": "README: --criterion label_smoothed_cross_entropy; "
                                                "--dist-func dropped (trime_mt_loss's option)"},
                   "argv": argvs, "runs": {run: jsonable(a) for run, a in run_args.items()},
                   "checkpoint": checkpoint_layout(run_args),
                   "models": {ARCH: model}}, f, indent=1)  # key order = state-dict order
        f.write("\n")
    print(f"{len(run_args)} runs, {ARCH} -> {cli.out} ({os.path.getsize(cli.out):,} bytes)")


if __name__ == "__main__":
    main()
