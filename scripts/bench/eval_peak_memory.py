"""Benchmark: peak resident memory of fairseq-eval-lm at WikiText-103's vocabulary (one run).

A WikiText-103-shaped model with random weights (267,744 words, adaptive input and softmax with
the paper's cutoffs 20,000 / 60,000, a small d) scores a random split with fairseq's default batch
(no --max-tokens: 36,000 tokens per batch) three ways, each in its own process: no memory,
--eval-memory local, and --save-dstore. It prints each run's peak resident memory
(``ru_maxrss``) and the bound a [tokens × vocabulary] fp32 tensor of that batch would need. A
run is capped at --cap-gb of address space: one that would need more ends with a MemoryError,
reported as such. ``--code DIR`` runs another trime checkout (e.g. an older commit, for a
before/after) instead of the installed one.

    python scripts/bench/eval_peak_memory.py --work /tmp/peak
    git worktree add /tmp/old <commit> && python scripts/bench/eval_peak_memory.py --work /tmp/peak --code /tmp/old
"""

import argparse
import os
import subprocess
import sys

import numpy as np

CHILD = r"""
import resource, sys
cap = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
sys.argv = ["fairseq-eval-lm"] + sys.argv[2:]
status = "ok"
try:
    from fairseq_cli.eval_lm import cli_main
    cli_main()
except MemoryError:
    status = "MemoryError"
except RuntimeError as error:  # torch reports a failed allocation as a RuntimeError
    status = "MemoryError" if "alloc" in str(error).lower() or "memory" in str(error).lower() else repr(error)
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, status, flush=True)
"""


def prepare(work: str, vocab: int, tokens: int, seed: int = 1) -> str:
    """dict.txt of ``vocab`` types (with fairseq's 4), a random Zipf-distributed split of
    ``tokens`` tokens binarised as valid (and a small train), and a 1-update checkpoint."""
    data = os.path.join(work, "data-bin")
    checkpoint = os.path.join(work, "model", "checkpoint_last.pt")
    if os.path.exists(checkpoint):
        return checkpoint
    os.makedirs(work, exist_ok=True)
    words = vocab - 4
    with open(os.path.join(work, "dict.txt"), "w") as f:
        f.writelines(f"w{i} {words - i}\n" for i in range(words))
    rng = np.random.default_rng(seed)
    ids = np.minimum(rng.zipf(1.2, tokens), words) - 1
    lines = [" ".join(f"w{i}" for i in ids[s:s + 100]) for s in range(0, tokens, 100)]
    for split, text in (("valid", lines), ("train", lines[:20])):
        with open(os.path.join(work, f"{split}.txt"), "w") as f:
            f.write("\n".join(text) + "\n")
    bin_dir = os.path.dirname(sys.executable)
    subprocess.run([os.path.join(bin_dir, "fairseq-preprocess"), "--only-source", "--srcdict",
                    os.path.join(work, "dict.txt"), "--trainpref", os.path.join(work, "train.txt"),
                    "--validpref", os.path.join(work, "valid.txt"), "--destdir", data,
                    "--workers", "2"], check=True, capture_output=True)
    import trime

    subprocess.run([os.path.join(bin_dir, "fairseq-train"), data, "--user-dir", trime.USER_DIR,
                    "--task", "trime_lm", "--criterion", "trime_loss", "--arch", "transformer_lm",
                    "--decoder-layers", "2", "--decoder-embed-dim", "64", "--decoder-input-dim", "64",
                    "--decoder-output-dim", "64", "--decoder-ffn-embed-dim", "128",
                    "--decoder-attention-heads", "2", "--adaptive-input", "--adaptive-input-cutoff",
                    "20000,60000", "--adaptive-softmax-cutoff", "20000,60000",
                    "--tie-adaptive-weights", "--adaptive-input-factor", "4",
                    "--adaptive-softmax-factor", "4", "--tokens-per-sample", "512",
                    "--optimizer", "adam", "--lr", "1e-4", "--batch-size", "1", "--max-update", "1",
                    "--save-dir", os.path.dirname(checkpoint), "--no-epoch-checkpoints", "--cpu",
                    "--num-workers", "0", "--disable-validation"], check=True, capture_output=True)
    return checkpoint


def peak(work, checkpoint, extra, cap_bytes, code=None):
    import trime

    env = dict(os.environ)
    if code:
        env["PYTHONPATH"] = code + os.pathsep + env.get("PYTHONPATH", "")
    user_dir = os.path.join(code, "trime_fairseq") if code else trime.USER_DIR
    argv = [os.path.join(work, "data-bin"), "--user-dir", user_dir, "--task", "trime_lm",
            "--path", checkpoint, "--gen-subset", "valid", "--tokens-per-sample", "512", "--cpu",
            "--num-workers", "0", *extra]
    proc = subprocess.run([sys.executable, "-c", CHILD, str(cap_bytes), *argv], env=env,
                          capture_output=True, text=True)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("PEAK_KB")), None)
    if line is None:
        return None, f"failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"
    _, kb, status = line.split(" ", 2)
    return int(kb) / 2 ** 20, status


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder for the data and the model")
    parser.add_argument("--vocab", type=int, default=267_744, help="dictionary size (WikiText-103)")
    parser.add_argument("--tokens", type=int, default=40_000, help="tokens of the scored split")
    parser.add_argument("--cap-gb", type=float, default=16.0, help="address-space cap of a run")
    parser.add_argument("--code", default=None, help="another trime checkout to run instead")
    args = parser.parse_args()
    checkpoint = prepare(args.work, args.vocab, args.tokens)
    batch = min(36_000, args.tokens)
    print(f"vocabulary {args.vocab:,}, fairseq's default batch (36,000 tokens; {batch:,} here): one "
          f"[tokens x vocabulary] fp32 tensor = {batch * args.vocab * 4 / 2**30:.1f} GiB; cap "
          f"{args.cap_gb:g} GiB; code: {args.code or 'installed trime'}")
    dstore = os.path.join(args.work, "dstore")
    for name, extra in (("no memory", []), ("--eval-memory local", ["--eval-memory", "local"]),
                        ("--save-dstore", ["--save-dstore", dstore])):
        for leftover in (dstore, dstore + ".partial"):
            if os.path.exists(leftover):
                import shutil

                shutil.rmtree(leftover)
        gib, status = peak(args.work, checkpoint, extra, int(args.cap_gb * 2 ** 30), args.code)
        print(f"{name:22s} peak resident {'-' if gib is None else f'{gib:.2f} GiB'}  ({status})")


if __name__ == "__main__":
    main()
