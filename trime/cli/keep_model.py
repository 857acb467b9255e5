"""trime-keep-model: a fairseq checkpoint as it is kept for resuming or re-scoring a table:
weights only (no optimizer state), floating-point weights in fp16 (half the bytes).

fairseq loads it as any checkpoint: ``fairseq-eval-lm --path KEPT`` builds the model in fp32 (or
fp16 with ``--fp16``) and copies the fp16 weights in, so scores differ from the original model's by
the fp16 rounding of the weights only. It cannot resume *training* (no optimizer state); a harness
step that trained the model is skipped once the kept checkpoint is back at its path.
"""

import argparse
import os
import sys

import torch

from trime.files import written_whole

# what a fairseq checkpoint holds besides the weights that only training needs
TRAINING_STATE = ("last_optimizer_state",)


def kept(state: dict) -> dict:
    """The checkpoint dict with the training state dropped and floating weights in fp16."""
    state = {key: value for key, value in state.items() if key not in TRAINING_STATE}
    state["model"] = {name: weight.half() if weight.is_floating_point() else weight
                      for name, weight in state["model"].items()}
    return state


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="trime-keep-model", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a fairseq checkpoint (e.g. MODELS/NAME/checkpoint_last.pt)")
    parser.add_argument("out", help="where the kept checkpoint goes (a file; its folder is made)")
    args = parser.parse_args(argv)
    if os.path.abspath(args.checkpoint) == os.path.abspath(args.out):
        parser.error("OUT is the checkpoint itself: write the kept copy elsewhere, then move it")
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
