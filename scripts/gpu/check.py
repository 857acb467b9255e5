"""Every CUDA path of trime, checked once on one GPU (``bash scripts/gpu_check.sh``).

Prints one line per check (``PASS`` / ``FAIL`` / ``SKIP`` name: what was measured) and a
summary; exit code 1 when a check failed. No download: the data is generated
(``trime-toy-corpus``) and the large tensors are random. ``--quick`` shrinks every size so that
the script itself can be tested on CPU (Triton's interpreter runs the fused kernel there).

Checks:
  kernel/*      the fused kernel vs the chunked op on the device: local / long / ext memory,
                fp32 / fp16 / bf16 inputs, lse and gradients (tolerances printed);
  step/*        trime_loss and trime_mt_loss training steps (fp32, fp16 and bf16 models) with
                --memory-kernel fused vs chunked: loss and parameter gradients;
  train/*       fairseq-train --fp16 and --bf16 with --memory local / long / ext (finite loss);
  eval/*        fairseq-eval-lm with every eval memory on the GPU equals the same on CPU; with
                --fp16 it stays finite and close;
  dstore/*      datastore saved on the GPU, index, ext eval with --knn-device torch / cpu /
                faiss-gpu (equal perplexities where the searches are exact);
  bench/*       loss overhead at d = 1,024 (TRIME step / CE step at N = 24,576, and the ext
                memory op at M = 196,608 tokens: 8 workers simulated), loss memory; ext-memory
                eval over 10M synthetic keys at K = 1,024 / no-memory eval. A bench check passes
                when it ran; its line says whether each target was met.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
results = []


def report(status, name, detail):
    results.append((status, name))
    print(f"{status:4s} {name}: {detail}", flush=True)


def check(name):
    """Run the decorated function as a check: it returns its detail line, or raises."""
    def wrap(fn):
        def run(*args, **kwargs):
            started = time.time()
            try:
                detail = fn(*args, **kwargs)
            except Skip as skip:
                return report("SKIP", name, str(skip))
            except Exception as error:  # one failing check does not stop the others
                traceback.print_exc(file=sys.stderr)
                return report("FAIL", name, f"{type(error).__name__}: {error}")
            report("PASS", name, f"{detail} ({time.time() - started:.1f} s)")
        return run
    return wrap


class Skip(Exception):
    pass


def shell(*argv, cwd=None):
    """Output of a console script; raises with its tail when it fails."""
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {(proc.stdout + proc.stderr)[-800:]}")
    return proc.stdout + proc.stderr


TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 3e-2}


def _close(got, ref, tol):
    got, ref = got.float(), ref.float()
    finite = torch.isfinite(ref)
    if not torch.equal(finite, torch.isfinite(got)):
        raise AssertionError("different empty sets")
    error = ((got[finite] - ref[finite]).abs() / (ref[finite].abs() + 1)).max().item() if finite.any() else 0
    if error > tol:
        raise AssertionError(f"relative error {error:.2e} > {tol:g}")
    return error


def kernel_checks(args):
    from trime.core.memory_lse import memory_logsumexp
    from trime.core.visibility import ExtMemory, LocalMemory, LongMemory

    device = args.device
    G, L, D = (2, 96, 48) if args.quick else (8, 512, 1024)
    N = G * L
    gen = torch.Generator(device="cpu").manual_seed(0)
    docs = (torch.arange(N) // (L + L // 2))[None]
    valid = torch.rand(G, L, generator=gen) > 0.05
    rules = {
        "local": (LocalMemory(valid.to(device)), (G, L)),
        "long": (LongMemory(valid.reshape(1, N).to(device), docs.to(device)), (1, N)),
        "ext": (ExtMemory(valid.reshape(1, N).to(device), (torch.arange(N) // L)[None].to(device),
                          keep_local=False), (1, N)),
    }
    for rule_name, (rule, shape) in rules.items():
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            @check(f"kernel/{rule_name}/{str(dtype).split('.')[1]}")
            def one():
                keys = torch.randn(*shape, D, generator=gen).to(device, dtype)
                labels = torch.randint(0, 50, shape, generator=gen).to(device)
                out = {}
                for kernel in ("chunked", "fused"):
                    q = keys.clone().requires_grad_()
                    torch.cuda.synchronize() if device == "cuda" else None
                    started = time.perf_counter()
                    lse_all, lse_pos = memory_logsumexp(q, q, labels, labels, rule, kernel=kernel)
                    upstream = torch.where(torch.isfinite(lse_all), lse_all, 0).sum() + \
                        torch.where(torch.isfinite(lse_pos), lse_pos, 0).sum()
                    (grad,) = torch.autograd.grad(upstream, q)
                    torch.cuda.synchronize() if device == "cuda" else None
                    out[kernel] = (lse_all, lse_pos, grad, time.perf_counter() - started)
                tol = TOLERANCE[dtype]
                errors = [_close(out["fused"][i], out["chunked"][i], tol) for i in range(3)]
                return (f"N = {N}, d = {D}: max rel. error lse {max(errors[:2]):.1e}, grad "
                        f"{errors[2]:.1e} (tol {tol:g}); fused {out['fused'][3]:.3f} s, chunked "
                        f"{out['chunked'][3]:.3f} s (first call includes compilation)")
            one()


def _tiny_lm(data, device, memory, kernel, dtype):
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from fairseq_utils import build

    torch.manual_seed(0)
    _, model, criterion = build(data, ["--memory-kernel", kernel],
                                ("--criterion", "trime_loss", "--memory", memory,
                                 *(["--local-drop-prob", "0"] if memory == "ext" else [])))
    return model.to(device, dtype).train(), criterion


def step_checks(args, work):
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from fairseq_utils import build_translation, lm_sample, translation_sample, write_dictionary

    device = args.device
    data = os.path.join(work, "dict")
    dictionary = write_dictionary(data)
    gen = torch.Generator().manual_seed(0)
    rows = torch.tensor([5, 6, 7, 8, 9])[torch.randint(5, (4, 100), generator=gen)].tolist()

    def to_device(sample):
        return {k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict)
                    else v.to(device) if torch.is_tensor(v) else v) for k, v in sample.items()}

    sample = to_device(lm_sample(dictionary, rows, pad_last=7))
    for memory in ("local", "ext"):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            @check(f"step/trime_loss/{memory}/{str(dtype).split('.')[1]}")
            def one():
                out = {}
                for kernel in ("chunked", "fused"):
                    model, criterion = _tiny_lm(data, device, memory, kernel, dtype)
                    loss, _, _ = criterion(model, sample)
                    loss.backward()
                    grads = torch.cat([p.grad.float().flatten() for p in model.parameters()
                                       if p.grad is not None])
                    out[kernel] = (loss.detach(), grads)
                tol = TOLERANCE[dtype]
                e_loss = _close(out["fused"][0], out["chunked"][0], tol)
                e_grad = _close(out["fused"][1], out["chunked"][1], tol)
                if not torch.isfinite(out["fused"][1]).all():
                    raise AssertionError("non-finite gradients")
                return f"loss {out['fused'][0].item():.4f}: rel. error loss {e_loss:.1e}, grads {e_grad:.1e}"
            one()

    @check("step/trime_mt_loss/bf16")
    def mt():
        out = {}
        for kernel in ("chunked", "fused"):
            torch.manual_seed(0)
            task, model, criterion = build_translation(
                os.path.join(work, "mt"), ["--memory-kernel", kernel],
                ("--criterion", "trime_mt_loss", "--memory-temp", "10"))
            model = model.to(device, torch.bfloat16).train()
            sample = to_device(translation_sample(task.tgt_dict, [[5, 6, 7], [8, 9], [6, 7, 5]],
                                                  [[10, 11, 12], [11, 13], [12, 10, 11]]))
            loss, _, _ = criterion(model, sample)
            loss.backward()
            out[kernel] = loss.detach()
        return f"rel. error {_close(out['fused'], out['chunked'], TOLERANCE[torch.bfloat16]):.1e}"
    mt()


def corpus(work):
    raw, binary = os.path.join(work, "raw"), os.path.join(work, "bin")
    if not os.path.isdir(binary):
        shell("trime-toy-corpus", raw)
        shell("fairseq-preprocess", "--only-source", "--trainpref", f"{raw}/train.txt",
              "--validpref", f"{raw}/valid.txt", "--destdir", binary, "--workers", "4")
    return binary


MODEL = ["--arch", "transformer_lm", "--decoder-layers", "2", "--decoder-embed-dim", "64",
         "--decoder-ffn-embed-dim", "256", "--decoder-input-dim", "64", "--decoder-output-dim", "64",
         "--decoder-attention-heads", "4",
         "--share-decoder-input-output-embed"]


def train_checks(args, work):
    import trime

    binary = corpus(work)
    device = [] if args.device == "cuda" else ["--cpu"]
    updates = "4" if args.quick else "30"
    for precision in (["--fp16"], ["--bf16"], []):
        for memory in ("local", "long", "ext"):
            name = precision[0][2:] if precision else "fp32"
            if args.quick and precision:
                continue  # fairseq's half optimisers need CUDA
            @check(f"train/{name}/{memory}")
            def one():
                save = os.path.join(work, f"model-{name}-{memory}")
                extra = ["--batching", "consecutive"] if memory == "long" else []
                out = shell("fairseq-train", binary, "--user-dir", trime.USER_DIR, "--task",
                            "trime_lm", "--criterion", "trime_loss", "--memory", memory, *extra,
                            *MODEL, "--tokens-per-sample", "128", "--batch-size", "16",
                            "--max-update", updates, "--optimizer", "adam", "--lr", "1e-3",
                            "--save-dir", save, "--no-epoch-checkpoints", "--disable-validation",
                            "--log-format", "json", "--log-interval", "1", "--num-workers", "0",
                            *precision, *device)
                losses = [json.loads(line.split("| ", 3)[-1])["loss"] for line in out.splitlines()
                          if "train_inner" in line and "{" in line]
                if not losses or not all(math.isfinite(float(x)) for x in losses):
                    raise AssertionError(f"losses {losses}")
                return f"{len(losses)} updates, loss {losses[0]} -> {losses[-1]}"
            one()
    return os.path.join(work, "model-fp32-local", "checkpoint_last.pt")


def _ppl(output):
    for line in output.splitlines()[::-1]:
        if "Perplexity:" in line:
            return float(line.rsplit("Perplexity:", 1)[1].split()[0].rstrip(","))
    raise AssertionError(f"no perplexity in: {output[-400:]}")


def eval_checks(args, work, checkpoint):
    import trime

    binary = corpus(work)
    base = [binary, "--user-dir", trime.USER_DIR, "--task", "trime_lm", "--path", checkpoint,
            "--tokens-per-sample", "128", "--batch-size", "8", "--gen-subset", "valid"]
    dstore = os.path.join(work, "dstore")

    def eval_lm(*extra, cpu=False):
        return _ppl(shell("fairseq-eval-lm", *base, *extra, *(["--cpu"] if cpu else [])))

    on_gpu = args.device == "cuda"
    for memory in ("none", "local", "local,long"):
        @check(f"eval/{memory}")
        def one():
            gpu = eval_lm("--eval-memory", memory, cpu=not on_gpu)
            cpu = eval_lm("--eval-memory", memory, cpu=True)
            if abs(gpu - cpu) > 1e-3 * cpu:
                raise AssertionError(f"{args.device} {gpu} vs cpu {cpu}")
            half = eval_lm("--eval-memory", memory, "--fp16") if on_gpu else gpu
            if not math.isfinite(half) or abs(half - cpu) > 2e-2 * cpu:
                raise AssertionError(f"--fp16 {half} vs cpu {cpu}")
            return f"ppl {args.device} {gpu:.3f} = cpu {cpu:.3f}; --fp16 {half:.3f}"
        one()

    @check("dstore/save+index")
    def save():
        shell("fairseq-eval-lm", *base[:-1], "train", "--save-dstore", dstore,
              *([] if on_gpu else ["--cpu"]))
        shell("trime-build-index", dstore, "--metric", "ip", "--index-type", "flat")
        shell("trime-build-index", dstore, "--metric", "l2", "--index-type", "flat")
        return f"{json.load(open(os.path.join(dstore, 'meta.json')))['num_tokens']} keys"
    save()
    ext = ["--dstore", dstore, "--knn-k", "64"]
    for memory, scoring in (("ext", "trime"), ("local,long,ext", "trime"), ("ext", "knnlm"),
                            ("local,ext", "knnlm")):
        @check(f"dstore/{memory}/{scoring}")
        def one():
            cpu = eval_lm("--eval-memory", memory, "--eval-scoring", scoring, *ext, "--knn-device",
                          "cpu", cpu=True)
            found = {}
            for device in ("torch", "faiss-gpu", "cpu"):
                if device == "faiss-gpu":
                    from trime.extmem.retrieval import faiss_gpus

                    if not on_gpu or faiss_gpus() == 0:
                        continue
                found[device] = eval_lm("--eval-memory", memory, "--eval-scoring", scoring, *ext,
                                        "--knn-device", device, cpu=not on_gpu)
                # the toy corpus repeats contexts: equal keys tie at the k-th place, and which
                # of them (with its label) a search keeps differs, so allow 0.5%
                if abs(found[device] - cpu) > 5e-3 * cpu:
                    raise AssertionError(f"--knn-device {device}: {found[device]} vs cpu {cpu}")
            return f"cpu {cpu:.3f}; " + ", ".join(f"{d} {p:.3f}" for d, p in found.items()) + \
                ("" if "faiss-gpu" in found else " (faiss-gpu not installed: not checked)")
        one()


def bench_checks(args):
    device = args.device
    if args.quick:
        sizes = ["--sizes", "256", "--seg-len", "128", "--layers", "1", "--embed-dim", "32",
                 "--ffn-dim", "64", "--heads", "2", "--vocab", "500", "--memory-tokens", "512"]
    else:  # the WikiText-103 247M model (16 layers, d 1,024, adaptive softmax over 267,744 words)
        sizes = ["--sizes", "24576", "--seg-len", "3072", "--layers", "16", "--embed-dim", "1024",
                 "--ffn-dim", "4096", "--heads", "16", "--vocab", "267744",
                 "--adaptive-softmax-cutoff", "20000,60000", "--memory-tokens", "196608", "--bf16"]
    for memory in ("local", "ext"):
        @check(f"bench/loss_overhead/{memory}")
        def one():
            out = shell(sys.executable, os.path.join(REPO, "scripts/bench/loss_overhead.py"), *sizes,
                        "--device", device, "--memory", memory, "--memory-kernel",
                        "fused" if device == "cuda" or args.quick else "chunked", "--skip-dense",
                        "--repeats", "3" if not args.quick else "1")
            print(out.strip(), flush=True)
            row = out.strip().splitlines()[-1].split()

            def against(value, limit):  # the benchmark reports; the targets are judged here
                return f"{value} (target <= {limit}: {'met' if float(value) <= limit else 'NOT met'})"

            verdict = f"TRIME / CE {against(row[3], 1.05)}, memory term MiB {against(row[4], 1536)}"
            if memory == "ext":
                tokens = int(sizes[sizes.index("--memory-tokens") + 1])
                verdict += f"; with M = {tokens:,} memory tokens {against(row[-1], 1.10)}"
            if args.quick:  # tiny sizes, and the fused kernel in Triton's interpreter off CUDA
                verdict += "; --quick sizes: the ratios say nothing about the targets"
            return verdict
        one()

    @check("bench/ext_eval_10M")
    def ext_eval():
        from trime.extmem.retrieval import faiss_gpus

        if device != "cuda" or faiss_gpus() == 0:
            raise Skip("needs CUDA and faiss-gpu (pip install trime[gpu]) for a GPU IVFPQ index")
        out = shell(sys.executable, os.path.join(HERE, "ext_eval_bench.py"),
                    *(["--keys", "200000", "--layers", "1"] if args.quick else []))
        print(out.strip(), flush=True)
        return out.strip().splitlines()[-1]
    ext_eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU test of this script)")
    parser.add_argument("--only", default="kernel,step,train,eval,bench",
                        help="comma-separated groups to run")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    work = args.work or tempfile.mkdtemp(prefix="trime-gpu-check-")
    groups = args.only.split(",")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"trime GPU check on {name}, torch {torch.__version__}, work {work}", flush=True)
    started = time.time()
    if "kernel" in groups:
        kernel_checks(args)
    if "step" in groups:
        step_checks(args, work)
    checkpoint = train_checks(args, work) if "train" in groups or "eval" in groups else None
    if "eval" in groups:
        eval_checks(args, work, checkpoint)
    if "bench" in groups:
        bench_checks(args)
    counts = {s: sum(1 for r, _ in results if r == s) for s in ("PASS", "FAIL", "SKIP")}
    failed = [n for r, n in results if r == "FAIL"]
    print(f"summary: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped in "
          f"{time.time() - started:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
