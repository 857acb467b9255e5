"""Record what the TRIME authors' fairseq-0.9 fork writes into a checkpoint, for the tests.

Runs the fork's own argument parser on each of its ``train_scripts/*.sh`` (the ``args``
Namespace its ``save_state`` stores) and builds its ``TransformerLanguageModel`` at a tiny
size for each of its three released architectures: the state-dict keys and shapes, which
keys share a tensor (the adaptive input / softmax ties), its version buffers, and the log-probabilities
it gives a fixed token sequence with deterministic weights (``tiny_weights`` below, which
``tests/authors_format.py`` imports). The tests read the result,
``tests/data/authors_layout.json``; they never need the fork.

    git clone https://github.com/princeton-nlp/TRIME fork   # or: fetch it, then git archive
    python scripts/authors_layout.py fork tests/data/authors_layout.json

The fork is 2022 code for numpy < 1.24: its removed aliases (``np.float`` ...) are restored
in this process before it is imported. Nothing of the fork is copied: it is imported and run.
"""

import argparse
import glob
import json
import math
import os
import shlex
import sys
import warnings

# the tiny size of each architecture: the released ones' structure (adaptive input and softmax,
# ties, final norm) with small numbers; vocabularies of 32 symbols (24 for enwik8, whose
# adaptive softmax "cutoff" is the whole vocabulary)
TINY = {
    "transformer_lm_wiki103": {"vocab": 32, "cutoff": "8,16"},
    "transformer_lm_wiki103_150M": {"vocab": 32, "cutoff": "8,16"},
    "transformer_lm_enwik8": {"vocab": 24, "cutoff": "24"},
}
TINY_DIMS = {"decoder_layers": 2, "decoder_embed_dim": 16, "decoder_input_dim": 16,
             "decoder_output_dim": 16, "decoder_ffn_embed_dim": 32, "decoder_attention_heads": 2}
TOKENS = [2, 5, 9, 20, 7, 13, 4, 23, 11, 17, 6, 2]  # a line between two eos, as fairseq streams it


def tiny_weights(tensors, tied):
    """Deterministic values for a state dict {key: shape}: tensor i (in state-dict order, the
    first key of each tie group, no buffers) gets 0.5·sin(0.7·j + i) over its flat index j,
    rounded to fp16 (the checkpoint's dtype); tied keys share one tensor, as the fork's tied
    modules do. ``tests/authors_format.py`` writes checkpoints with these weights."""
    import torch

    follower = {k: group[0] for group in tied for k in group[1:]}
    values, i = {}, 0
    for key, shape in tensors.items():
        if key in follower or key.endswith(("_float_tensor", "version")):
            continue
        j = torch.arange(math.prod(shape), dtype=torch.float64)
        values[key] = (0.5 * torch.sin(0.7 * j + i)).reshape(shape).half()
        i += 1
    for key, leader in follower.items():
        values[key] = values[leader]
    return values


def load_tiny_weights(model):
    """Give a model built by the fork its ``tiny_weights``; returns ({key: shape} in state-dict
    order, the groups of keys that share one tensor, the state dict)."""
    state = model.state_dict()
    tensors = {k: list(v.shape) for k, v in state.items()}
    by_pointer = {}
    for key, tensor in state.items():
        by_pointer.setdefault(tensor.data_ptr(), []).append(key)
    tied = [keys for keys in by_pointer.values() if len(keys) > 1]
    weights = tiny_weights(tensors, tied)
    model.load_state_dict({k: weights.get(k, v) for k, v in state.items()})
    model.eval()
    return tensors, tied, state


def parse_script(options, path):
    words = shlex.split(open(path).read().replace("\\\n", " "), comments=True)
    argv = words[words.index("train.py") + 1:]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    # what the fork's TransformerLanguageModel.build_model sets on the same Namespace before
    # the trainer saves it
    if getattr(args, "max_target_positions", None) is None:
        args.max_target_positions = args.tokens_per_sample
    return args


def tiny_model(options, args, arch):
    import torch
    from fairseq.data import Dictionary
    from fairseq.models.transformer_lm import TransformerLanguageModel

    size = TINY[arch]
    dictionary = Dictionary()
    for n in range(size["vocab"] - len(dictionary)):
        dictionary.add_symbol(f"w{n}")
    assert len(dictionary) == size["vocab"]

    class Task:
        source_dictionary = target_dictionary = dictionary

    tiny = argparse.Namespace(**vars(args))
    overrides = dict(TINY_DIMS, adaptive_input_cutoff=size["cutoff"],
                     adaptive_softmax_cutoff=size["cutoff"])
    for key, value in overrides.items():
        setattr(tiny, key, value)
    model = TransformerLanguageModel.build_model(tiny, Task())
    tensors, tied, state = load_tiny_weights(model)
    tokens = torch.tensor([[t % size["vocab"] if t >= 4 else t for t in TOKENS]])
    source, target = tokens[:, :-1], tokens[:, 1:]
    with torch.no_grad():
        out = model(source)
        log_probs = model.get_normalized_probs(out, log_probs=True, sample={"target": target})
    target_log_probs = log_probs.gather(-1, target[..., None])[0, :, 0]
    return {
        "vocab": size["vocab"], "overrides": overrides, "tokens": tokens[0].tolist(),
        "tensors": tensors,
        # the version buffers' values (``_float_tensor`` buffers are uninitialised memory)
        "versions": {k: v.tolist() for k, v in state.items() if k.endswith("version")},
        "tied": tied,
        "target_log_probs": [float(x) for x in target_log_probs],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fork", help="a checkout of princeton-nlp/TRIME")
    parser.add_argument("out", help="the JSON file to write (tests/data/authors_layout.json)")
    cli = parser.parse_args()

    warnings.filterwarnings("ignore")
    import numpy as np

    for name, kind in (("float", float), ("int", int), ("bool", bool), ("long", int),
                       ("object", object)):
        setattr(np, name, kind)  # removed in numpy 1.24; the fork still uses them
    sys.path.insert(0, os.path.abspath(cli.fork))
    from fairseq import options
    import fairseq

    assert fairseq.__version__ == "0.9.0" and fairseq.__file__.startswith(
        os.path.abspath(cli.fork)), f"not the fork's fairseq: {fairseq.__file__}"

    runs, models = {}, {}
    for path in sorted(glob.glob(os.path.join(cli.fork, "train_scripts", "*.sh"))):
        args = parse_script(options, path)
        runs[os.path.basename(path)[:-3]] = vars(args)
        if args.arch not in models:
            models[args.arch] = tiny_model(options, args, args.arch)
    for model in models.values():
        assert all(math.isfinite(x) for x in model["target_log_probs"])
    with open(cli.out, "w") as f:
        json.dump({"source": "princeton-nlp/TRIME: fairseq 0.9 options.parse_args_and_arch on "
                             "train_scripts/*.sh; TransformerLanguageModel at tiny sizes",
                   "runs": runs, "models": models}, f, indent=1)  # key order = state-dict order
        f.write("\n")
    print(f"{len(runs)} runs, {len(models)} architectures -> {cli.out}")


if __name__ == "__main__":
    main()
