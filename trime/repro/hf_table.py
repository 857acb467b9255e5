"""``trime-repro hf-wikitext2``: TRIME with Hugging Face ``transformers`` on WikiText-2 (issue-level
analog of Table 10 with ``trime.hf``): a GPT-2-style model of the budget's size (layers, width, FFN,
heads of its fairseq 7M model; word-level tokenizer trained on the train split, nothing from a
hub) trained three times with the same budget — the plain LM loss (Transformer), TRIME with local
memory (TrimeLM) and with BM25-batched external memory (TrimeLM_ext) — then scored on dev and test
with each evaluation memory (none, local, local + long, and for TrimeLM_ext its own train
datastore), at the options' defaults (τ = 1; λ = 0.3, τ′ = 1). Beside: the training-step time
of the TRIME loss ÷ the plain loss, measured on the same batches in one process
(``trime.hf.bench``)."""

import json
import os

from trime.repro.rows import Table

HF_MODELS = {"Transformer": "none", "TrimeLM": "local", "TrimeLM_ext": "ext"}
EVAL_MEMORIES = ("none", "local", "local,long")


def _arch(budget, flag):
    return budget.model[budget.model.index(flag) + 1]


def hf_wikitext2(recipes):
    b, runner = recipes.budget, recipes.runner
    text = {split: recipes.splits[split] for split in ("train", "valid", "test")}
    device = ["--cpu"] if b.device == "cpu" else []
    size = ["--layers", _arch(b, "--decoder-layers"), "--dim", _arch(b, "--decoder-embed-dim"),
            "--ffn", _arch(b, "--decoder-ffn-embed-dim"), "--heads", _arch(b, "--decoder-attention-heads"),
            "--tokens-per-sample", b.tokens_per_sample]
    folder = {memory: runner.path("hf", memory) for memory in HF_MODELS.values()}
    runner.run_many([(f"hf-train-{memory}", [
        "trime-hf-train", text["train"], "--out", folder[memory], "--memory", memory, *size,
        "--batch-size", b.batch_size, "--max-steps", b.updates, "--lr", b.lr,
        "--warmup-steps", max(b.updates // 10, 1), "--ce-warmup-steps", b.updates // 20,
        "--consecutive-segments", b.consecutive_segments, "--bm25-k", b.bm25_k,
        "--doc-boundary", b.doc_boundary, "--save-steps", max(b.updates // 10, 1), "--seed", b.seed,
        *device], {"done_if": [os.path.join(folder[memory], "train.json")]})
        for memory in HF_MODELS.values()])
    dstore = runner.path("hf", "dstore-ext")
    runner.run("hf-dstore-ext", ["trime-hf-eval", folder["ext"], text["train"], "--save-dstore", dstore,
                                 "--tokens-per-sample", b.tokens_per_sample, "--doc-boundary", b.doc_boundary,
                                 *device], done_if=[os.path.join(dstore, "meta.json")])
    runner.run("hf-index-ext", ["trime-build-index", dstore, "--metric", "ip", *b.index],
               done_if=[os.path.join(dstore, "index.ip.faiss")])
    rows = {}
    for name, memory in HF_MODELS.items():
        rows[name] = {}
        for eval_memory in EVAL_MEMORIES + (("local,long,ext",) if memory == "ext" else ()):
            options = ["--eval-memory", eval_memory]
            if "long" in eval_memory:
                options += ["--long-memory-size", b.long_memory_size]
            if "ext" in eval_memory:
                options += ["--dstore", dstore, *b.knn]
            cell = {"options": [str(o) for o in options]}
            for split in ("valid", "test"):
                out = runner.path("hf", f"eval-{memory}-{eval_memory.replace(',', '+')}-{split}.json")
                runner.run(f"hf-eval-{memory}-{eval_memory.replace(',', '+')}-{split}", [
                    "trime-hf-eval", folder[memory], text[split], *options,
                    "--tokens-per-sample", b.tokens_per_sample, "--batch-size", b.eval_batch_size,
                    "--doc-boundary", b.doc_boundary, "--out", out, *device], done_if=[out])
                if not runner.dry_run:
                    with open(out) as f:
                        cell[split] = json.load(f)["perplexity"]
            rows[name][eval_memory] = cell
    if runner.dry_run:
        return {}
    rows["step time"] = _step_time(recipes, folder["none"])
    return rows


def _step_time(recipes, vanilla_folder):
    """trime.hf.bench on the train split (the vanilla model's tokenizer and size), once per work
    folder (hf/step_time.json)."""
    path = recipes.runner.path("hf", "step_time.json")
    if not os.path.exists(path):
        import transformers

        from trime.hf.data import read_segments
        from trime.hf.bench import step_seconds

        b = recipes.budget
        tokenizer = transformers.AutoTokenizer.from_pretrained(vanilla_folder)
        config = transformers.AutoConfig.from_pretrained(vanilla_folder)
        segments = read_segments(recipes.splits["train"], tokenizer, b.doc_boundary, b.tokens_per_sample)
        result = step_seconds(lambda: transformers.AutoModelForCausalLM.from_config(config), segments,
                              b.batch_size, bm25_k=b.bm25_k, seed=b.seed)
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
    with open(path) as f:
        return json.load(f)


def render_hf_wikitext2(rows):
    memories = ("none", "local", "local,long", "local,long,ext")
    lines = ["| model (training memory) | " + " | ".join(f"{m}: dev / test" for m in memories) + " |",
             "|---" * (len(memories) + 1) + "|"]
    for name, memory in HF_MODELS.items():
        cells = [f"{rows[name][m]['valid']:.2f} / {rows[name][m]['test']:.2f}" if m in rows[name] else "—"
                 for m in memories]
        lines.append(f"| {name} ({memory}) | " + " | ".join(cells) + " |")
    step = rows["step time"]
    lines += ["", f"Training-step time on the same {step['batch_size']}-segment batches, median of "
              f"{step['steps']} steps in one process (trime.hf.bench): "
              + ", ".join(f"{m} {s:.2f} s ({step['ratio_to_plain'][m]:.2f}× the plain loss)"
                          for m, s in step["seconds_per_step"].items()) + "."]
    return lines


HF_TABLES = (Table("hf-wikitext2", hf_wikitext2, render_hf_wikitext2),)
