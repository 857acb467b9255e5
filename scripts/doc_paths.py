#!/usr/bin/env python3
"""Run the CPU-sized paths of the documentation, block by block, and time every block.

A path is a sequence of fenced ```bash blocks in one of docs/*.md, each preceded by the line
``<!-- cpu-path: NAME -->``. The blocks of a path run in document order in ONE bash session
(variables set in one block are seen by the next) with ``set -euo pipefail``, in the folder
WORK/NAME, so any failing command stops the path with its exit status.

The docs name their data folders in lines such as ``WT2=path/to/wikitext-2``; the runner replaces
the value of those lines (``WT2``, ``MULTI30K``) with --data-wt2 / --data-multi30k, so the blocks stay
literally copy-pasteable for a reader who edits that one line.

    python scripts/doc_paths.py --data-wt2 DIR --data-multi30k DIR --work WORK [--only NAME] [--tiny]
    python scripts/doc_paths.py --list

It prints the wall time of every block (what the docs write beside each step, as the block's
``# time on 2 CPU cores: ...`` comment line) and a summary at the end; --record-times writes the
measured times into those comment lines of the docs (full runs only). --tiny rewrites the sizes
through TINY_SUBSTITUTIONS below (one table for every path) and fails when an entry of the table
matches nothing in a path it names, so the docs cannot drift away from it.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
MARKER = re.compile(r"^<!--\s*cpu-path:\s*([\w-]+)\s*-->\s*$")
DATA_LINE = re.compile(r"^(WT2|MULTI30K)=\S+", re.MULTILINE)
TIME_LINE = re.compile(r"^# time on 2 CPU cores: .*$", re.MULTILINE)
LM_PATHS = ("memories", "cache", "external-memory", "knn-lm", "tuning")

# --tiny: (paths, regex, replacement). Every entry must match at least once in every path it names.
TINY_SUBSTITUTIONS = [
    # LM model: the docs' 4-layer d = 128 adaptive model -> 1 layer, d = 16
    (LM_PATHS, r"--decoder-layers 4\b", "--decoder-layers 1"),
    (LM_PATHS, r"--decoder-(embed|input|output)-dim 128\b", r"--decoder-\1-dim 16"),
    (LM_PATHS, r"--decoder-ffn-embed-dim 512\b", "--decoder-ffn-embed-dim 32"),
    (LM_PATHS, r"--decoder-attention-heads 4\b", "--decoder-attention-heads 2"),
    (LM_PATHS, r"--adaptive-(input|softmax)-cutoff 2000,10000\b", r"--adaptive-\1-cutoff 20,100"),
    # LM budget: segments, batches, updates, CE warm-up, memory sizes
    (LM_PATHS, r"--tokens-per-sample 256\b", "--tokens-per-sample 32"),
    (LM_PATHS, r"--max-update \d+", "--max-update 6"),
    (("memories", "external-memory", "tuning"), r"--ce-warmup-updates \d+", "--ce-warmup-updates 1"),
    (LM_PATHS, r"--log-interval \d+", "--log-interval 2"),
    (("memories", "cache", "external-memory", "tuning"), r"--long-memory-size (1024|2048)\b",
     "--long-memory-size 64"),
    (("memories",), r"--sizes 0,256,1024\b", "--sizes 0,32,64"),
    (("memories",), r"--consecutive-segments 4\b", "--consecutive-segments 2"),
    (("external-memory",), r"--k 20\b", "--k 3"),
    (("external-memory", "knn-lm"), r"--knn-k 1024\b", "--knn-k 8"),
    (("external-memory", "knn-lm"), r"--knn-nprobe 32\b", "--knn-nprobe 4"),
    (("external-memory", "knn-lm"), r"--nlist 1024 --pq-m 32 --train-size 200000\b", "--nlist 8 --pq-m 4 --train-size 4096"),
    # the toy corpus separates stories by empty lines; WikiText-2 has article titles
    (("memories", "cache", "tuning"), r"--doc-boundary title\b", "--doc-boundary empty-line"),
    # translation: BPE, model, budget, index, tuning grids
    (("translation",), r"--bpe-merges 10000\b", "--bpe-merges 60"),
    (("translation",), r"--(encoder|decoder)-embed-dim 128\b", r"--\1-embed-dim 16"),
    (("translation",), r"--(encoder|decoder)-ffn-embed-dim 256\b", r"--\1-ffn-embed-dim 32"),
    (("translation",), r"--(encoder|decoder)-attention-heads 4\b", r"--\1-attention-heads 2"),
    (("translation",), r"--max-update \d+", "--max-update 8"),
    (("translation",), r"--ce-warmup-updates \d+", "--ce-warmup-updates 2"),
    (("translation",), r"--warmup-updates 100\b", "--warmup-updates 4"),
    (("translation",), r"--log-interval \d+", "--log-interval 2"),
    (("translation",), r"--max-tokens 4096\b", "--max-tokens 256"),
    (("translation",), r"--nlist 512 --pq-m 32\b", "--nlist 8 --pq-m 4"),
    (("translation",), r"--knn-ks 8,16\b", "--knn-ks 4"),
    (("translation",), r"--knn-k 16\b", "--knn-k 4"),
]


def find_paths(docs_dir=DOCS):
    """{name: [(doc file, line number, block text), ...]} in document order."""
    paths = {}
    for name in sorted(os.listdir(docs_dir)):
        if not name.endswith(".md"):
            continue
        lines = open(os.path.join(docs_dir, name), encoding="utf-8").read().splitlines()
        i = 0
        while i < len(lines):
            match = MARKER.match(lines[i])
            if match:
                if i + 1 >= len(lines) or lines[i + 1].strip() != "```bash":
                    raise SystemExit(f"docs/{name}:{i + 1}: a cpu-path marker must be followed by a ```bash block")
                end = i + 2
                while end < len(lines) and lines[end].strip() != "```":
                    end += 1
                if end == len(lines):
                    raise SystemExit(f"docs/{name}:{i + 2}: unclosed ```bash block")
                paths.setdefault(match.group(1), []).append((name, i + 3, "\n".join(lines[i + 2:end])))
                i = end
            i += 1
    return paths


def tiny_blocks(name, blocks, table=TINY_SUBSTITUTIONS):
    """The path's blocks with the --tiny substitutions applied; an entry for this path that matches
    nothing is an error (the docs changed: update the table)."""
    texts = [text for _, _, text in blocks]
    for paths, pattern, replacement in table:
        if name not in paths:
            continue
        total = 0
        for i, text in enumerate(texts):
            texts[i], count = re.subn(pattern, replacement, text)
            total += count
        if total == 0:
            raise SystemExit(f"--tiny: the substitution {pattern!r} matches nothing in path {name!r}: "
                             "update TINY_SUBSTITUTIONS in scripts/doc_paths.py to the docs")
    return texts


def set_data(text, data):
    """Replace the docs' data folder lines (WT2=..., MULTI30K=...) with the given folders."""
    def replace(match):
        var = match.group(1)
        if data.get(var) is None:
            raise SystemExit(f"this path needs {var}: pass --data-{'wt2' if var == 'WT2' else 'multi30k'}")
        return f"{var}={shlex.quote(os.path.abspath(data[var]))}"
    return DATA_LINE.sub(replace, text)


def format_time(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def run_path(name, texts, work, env):
    """Run the blocks in one bash session; returns [seconds per block] or raises SystemExit."""
    folder = os.path.join(work, name)
    if os.path.isdir(folder) and os.listdir(folder):
        # fairseq-train would resume from a checkpoint there and skip the training it times
        raise SystemExit(f"{folder} is not empty: the docs' runs start in an empty folder; remove it "
                         "or give another --work")
    os.makedirs(folder, exist_ok=True)
    script = ["set -euo pipefail"]
    for i, text in enumerate(texts):
        script += [f"echo '@@doc-paths start {i}' >&2", text, f"echo '@@doc-paths end {i}' >&2"]
    script_path = os.path.join(folder, "doc_path.sh")
    with open(script_path, "w") as f:
        f.write("\n".join(script) + "\n")
    log_path = os.path.join(folder, "doc_path.log")
    times, started = [], time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["bash", script_path], cwd=folder, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if line.startswith("@@doc-paths start"):
                started = time.time()
                block = int(line.split()[-1])
                first = next((l for l in texts[block].splitlines() if l and not l.startswith("#")), "")
                print(f"[{name} {block + 1}/{len(texts)}] {first[:100]}", flush=True)
            elif line.startswith("@@doc-paths end"):
                times.append(time.time() - started)
                print(f"[{name} {len(times)}/{len(texts)}] done in {format_time(times[-1])} "
                      f"({times[-1]:.1f} s)", flush=True)
            else:
                sys.stdout.write("    " + line)
                sys.stdout.flush()
        code = proc.wait()
    if code != 0:
        raise SystemExit(f"path {name!r} failed in block {len(times) + 1} with exit status {code} "
                         f"(log: {log_path})")
    return times


def record_times(name, times):
    """Write the measured times into the '# time on 2 CPU cores:' lines of the path's blocks (found
    again in the docs as they are now, by their order in the path)."""
    blocks = find_paths()[name]
    if len(blocks) != len(times):
        raise SystemExit(f"docs changed while {name!r} ran ({len(blocks)} blocks now, {len(times)} timed): "
                         "times not recorded")
    for (doc, line, text), seconds in zip(blocks, times):
        path = os.path.join(DOCS, doc)
        lines = open(path, encoding="utf-8").read().split("\n")
        for j in range(line - 1, line - 1 + len(text.split("\n"))):
            if TIME_LINE.match(lines[j]):
                lines[j] = f"# time on 2 CPU cores: {format_time(seconds)}"
                break
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-wt2", help="WikiText-2 folder (wiki.{train,valid,test}.tokens)")
    parser.add_argument("--data-multi30k", help="Multi30k folder with raw/{train,val,test_2016_flickr}.{de,en}.gz")
    parser.add_argument("--work", default="runs/doc-paths", help="one sub-folder per path")
    parser.add_argument("--only", action="append", help="run this path only (repeatable)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (TINY_SUBSTITUTIONS), for the test")
    parser.add_argument("--record-times", action="store_true",
                        help="write the measured block times into the docs (not with --tiny)")
    parser.add_argument("--list", action="store_true", help="list the paths and their blocks, then exit")
    args = parser.parse_args(argv)
    paths = find_paths()
    if args.list:
        for name, blocks in paths.items():
            print(f"{name}: {len(blocks)} blocks in " + ", ".join(sorted({f'docs/{d}' for d, _, _ in blocks})))
        return
    if args.tiny and args.record_times:
        parser.error("--record-times records full-size runs only")
    names = args.only or list(paths)
    unknown = [n for n in names if n not in paths]
    if unknown:
        parser.error(f"unknown path(s) {unknown}; the docs have {sorted(paths)}")
    data = {"WT2": args.data_wt2, "MULTI30K": args.data_multi30k}
    # the console scripts (fairseq-train, trime-*) and python3 of the interpreter running this script first
    bin_dir = os.path.dirname(os.path.abspath(sys.executable))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    summary = []
    for name in names:
        blocks = paths[name]
        texts = tiny_blocks(name, blocks) if args.tiny else [text for _, _, text in blocks]
        texts = [set_data(text, data) for text in texts]
        started = time.time()
        times = run_path(name, texts, os.path.abspath(args.work), env)
        summary.append((name, blocks, times, time.time() - started))
        if args.record_times:
            record_times(name, times)
    print("\nwall time per block" + (" (--tiny)" if args.tiny else ""))
    for name, blocks, times, total in summary:
        print(f"{name}: {format_time(total)} in all")
        for (doc, line, text), seconds in zip(blocks, times):
            first = next((l for l in text.splitlines() if l and not l.startswith("#")), "")
            print(f"  docs/{doc}:{line:<4} {format_time(seconds):>12}  {first[:70]}")


if __name__ == "__main__":
    main()
