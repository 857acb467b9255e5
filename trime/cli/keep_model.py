"""trime-keep-model: a trained model as it is kept for resuming or re-scoring a table: weights
only (no optimizer state), floating-point weights in fp16 (half the bytes). The model is a fairseq
checkpoint (a file), or a ``transformers`` ``save_pretrained`` folder such as trime-hf-train's OUT
(kept: every file but the Trainer's ``checkpoints/``, with ``*.safetensors`` in fp16).

fairseq loads it as any checkpoint: ``fairseq-eval-lm --path KEPT`` builds the model in fp32 (or
fp16 with ``--fp16``) and copies the fp16 weights in, so scores differ from the original model's by
the fp16 rounding of the weights only. It cannot resume *training* (no optimizer state); a harness
step that trained the model is skipped once the kept checkpoint is back at its path.
trime-hf-eval loads a kept folder in fp32 in the same way.
"""

import argparse
import os
import shutil
import sys

import torch

from trime.files import written_whole

# what a fairseq checkpoint holds besides the weights that only training needs
TRAINING_STATE = ("last_optimizer_state",)


def kept(state: dict) -> dict:
    """The checkpoint dict with the training state dropped and floating weights in fp16."""
    state = {key: value for key, value in state.items() if key not in TRAINING_STATE}
    halves = {}  # tied weights (e.g. --share-decoder-input-output-embed) stay one tensor, stored once

    def half(weight):
        if not weight.is_floating_point():
            return weight
        tie = (weight.data_ptr(), weight.shape, weight.stride())
        if tie not in halves:
            halves[tie] = weight.half()
        return halves[tie]

    state["model"] = {name: half(weight) for name, weight in state["model"].items()}
    return state


def keep_hf_folder(folder: str, out: str) -> None:
    """Copy a ``save_pretrained`` folder to ``out`` (replacing it once the copy is whole) without
    the Trainer's ``checkpoints/``, its ``*.safetensors`` weights in fp16."""
    from safetensors.torch import load_file, save_file

    partial = out.rstrip(os.sep) + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(folder, partial, ignore=shutil.ignore_patterns("checkpoints", "*.safetensors"))
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            weights = load_file(os.path.join(folder, name))
            save_file({key: value.half() if value.is_floating_point() else value
                       for key, value in weights.items()}, os.path.join(partial, name), metadata={"format": "pt"})
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="trime-keep-model", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a fairseq checkpoint (e.g. MODELS/NAME/checkpoint_last.pt), or a "
                                           "transformers save_pretrained folder (e.g. trime-hf-train's OUT)")
    parser.add_argument("out", help="where the kept copy goes (a file, or a folder for a folder; made)")
    args = parser.parse_args(argv)
    if os.path.abspath(args.checkpoint) == os.path.abspath(args.out):
        parser.error("OUT is the checkpoint itself: write the kept copy elsewhere, then move it")
    if os.path.isdir(args.checkpoint):
        if not any(name.endswith(".safetensors") for name in os.listdir(args.checkpoint)):
            parser.error(f"{args.checkpoint} holds no *.safetensors weights: give a folder written by "
                         f"save_pretrained (trime-hf-train's OUT once training ended)")
        keep_hf_folder(args.checkpoint, args.out)
        print(f"{args.out}: {_size(args.out) / 2**20:.1f} MiB (from {_size(args.checkpoint) / 2**20:.1f} MiB)")
        return 0
    from trime.glue.checkpoints import allow_namespace_in_checkpoints

    allow_namespace_in_checkpoints()
    try:
        state = torch.load(args.checkpoint, map_location="cpu")
    except FileNotFoundError:
        parser.error(f"no checkpoint {args.checkpoint}")
    if not isinstance(state, dict) or "model" not in state:
        parser.error(f"{args.checkpoint} is not a fairseq checkpoint (no 'model' weights)")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with written_whole(args.out, ".partial") as partial:  # an interrupted run leaves no kept model
        torch.save(kept(state), partial)
    print(f"{args.out}: {os.path.getsize(args.out) / 2**20:.1f} MiB "
          f"(from {os.path.getsize(args.checkpoint) / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
