"""`trime-hf-train`: train a GPT-2-style ``transformers`` model from a config (nothing from a hub)
on a text file with the TRIME loss (``trime.hf``), resumable, on CPU or GPU.

The tokenizer is a word-level ``tokenizers`` model with every whitespace-separated word of the
training file and a line-end token </s> (WikiText is tokenised already, so perplexities are per word
and line end, as fairseq's), built into OUT/tokenizer unless --tokenizer names one. --memory picks
the memory and the batches of paper §4: none (the plain LM loss, random batches), local (TrimeLM,
random batches), long (TrimeLM_long, --consecutive-segments consecutive segments of a document), ext
(TrimeLM_ext, Algorithm 1's BM25 batches, own segment dropped with --local-drop-prob). Checkpoints
go to OUT/checkpoints every --save-steps; run the same command again to resume (or with a larger
--max-steps to train on); a finished run is not repeated. At the end OUT holds the model and
tokenizer (``save_pretrained``, for trime-hf-eval) and train.json (the command, the final losses and
the time per step).

    trime-hf-train wikitext-2/train.txt --out runs/hf/trime_ext --memory ext --max-steps 800
    trime-hf-eval runs/hf/trime_ext wikitext-2/valid.txt --eval-memory local,long
"""

import argparse
import glob
import json
import os
import sys
import time

from trime.cli.parsing import HelpFormatter
from trime.errors import console_script

BATCHING = {"none": "random", "local": "random", "long": "consecutive", "ext": "bm25"}
UNKNOWN = "<unk>"  # WikiText's own unknown-word token
LINE_END = "</s>"  # each line's end, a token as in fairseq's dictionaries


def word_tokenizer(lines, folder):
    """A word-level tokenizer whose vocabulary is <unk>, </s> and every word of these lines (most
    frequent first), saved to folder. A line end reads as </s>. (The tokenizers' WordLevelTrainer
    is not used: it keeps 30,000 words by default, fewer than WikiText-2's 33,278.)"""
    import collections

    import tokenizers
    import transformers

    counts = collections.Counter(word for line in lines for word in line.split())
    for special in (UNKNOWN, LINE_END):
        counts.pop(special, None)
    ranked = sorted(counts, key=lambda word: (-counts[word], word))
    vocab = {word: i for i, word in enumerate([UNKNOWN, LINE_END, *ranked])}
    words = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=UNKNOWN))
    words.normalizer = tokenizers.normalizers.Replace("\n", f" {LINE_END} ")
    words.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=words, unk_token=UNKNOWN)
    tokenizer.save_pretrained(folder)
    return tokenizer


def gpt2_config(vocab_size, args):
    import transformers

    return transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=args.tokens_per_sample + 1, n_layer=args.layers,
        n_embd=args.dim, n_inner=args.ffn, n_head=args.heads, resid_pdrop=args.dropout,
        embd_pdrop=args.dropout, attn_pdrop=args.dropout, bos_token_id=None, eos_token_id=None)


@console_script
def main(argv=None):
    from trime.core.documents import DOC_BOUNDARIES

    parser = argparse.ArgumentParser(prog="trime-hf-train", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=HelpFormatter)
    parser.add_argument("train", help="the training text file")
    parser.add_argument("--out", required=True, help="the model's folder (created; a rerun resumes)")
    parser.add_argument("--tokenizer", default=None,
                        help="a tokenizer folder (default: a word-level one with every word of TRAIN, "
                             "built into OUT/tokenizer)")
    parser.add_argument("--memory", choices=tuple(BATCHING), default="local",
                        help="training memory; it sets the batches (none, local: random; long: "
                             "consecutive; ext: BM25)")
    parser.add_argument("--doc-boundary", choices=DOC_BOUNDARIES, default="title",
                        help="how documents are delimited in the file (long memory and consecutive "
                             "batches never cross one)")
    parser.add_argument("--layers", type=int, default=8, help="Transformer layers")
    parser.add_argument("--dim", type=int, default=128, help="model width d")
    parser.add_argument("--ffn", type=int, default=512, help="FFN width")
    parser.add_argument("--heads", type=int, default=4, help="attention heads")
    parser.add_argument("--dropout", type=float, default=0.1, help="dropout of the residuals, embeddings and attention")
    parser.add_argument("--tokens-per-sample", type=int, default=512, metavar="L", help="targets per segment")
    parser.add_argument("--batch-size", type=int, default=8, help="segments per step")
    parser.add_argument("--max-steps", type=int, default=800, help="optimiser steps")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (Adam, inverse-sqrt decay)")
    parser.add_argument("--warmup-steps", type=int, default=80, help="learning-rate warm-up")
    parser.add_argument("--ce-warmup-steps", type=int, default=40,
                        help="steps of the plain LM loss first (§5.2; ignored with --memory none)")
    parser.add_argument("--local-drop-prob", type=float, default=None,
                        help="--memory ext: p of dropping the own segment (§4.3; default 0.9)")
    parser.add_argument("--consecutive-segments", type=int, default=2, metavar="M",
                        help="--memory long: segments per group")
    parser.add_argument("--bm25-k", type=int, default=20, help="--memory ext: BM25 neighbours per segment")
    parser.add_argument("--save-steps", type=int, default=80, help="checkpoint every this many steps")
    parser.add_argument("--seed", type=int, default=1, help="seed of the weights, the batches and the local-drop draw")
    parser.add_argument("--cpu", action="store_true", help="train on CPU even when a GPU is available")
    args = parser.parse_args(argv)
    for name in ("layers", "dim", "ffn", "heads", "tokens_per_sample", "batch_size", "max_steps",
                 "save_steps", "consecutive_segments", "bm25_k"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.local_drop_prob is not None and args.memory != "ext":
        parser.error("--local-drop-prob applies to --memory ext only")

    import torch
    import transformers

    from trime.hf.data import read_segments
    from trime.hf import TrimeLoss
    from trime.hf.data import BM25Batches, ConsecutiveBatches
    from trime.hf.trainer import ProgressLines, TrimeTrainer

    command = ["trime-hf-train", *(sys.argv[1:] if argv is None else argv)]
    record_path = os.path.join(args.out, "train.json")
    if os.path.isfile(record_path):
        with open(record_path) as f:
            done = json.load(f)
        if done.get("command") == command and done.get("steps", 0) >= args.max_steps:
            print(f"{args.out} is trained already ({done['steps']} steps, train.json): nothing to do")
            return
    os.makedirs(args.out, exist_ok=True)
    with open(args.train, encoding="utf-8") as f:
        lines = f.readlines()
    tokenizer_dir = args.tokenizer or os.path.join(args.out, "tokenizer")
    if os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")):
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    elif args.tokenizer:
        parser.error(f"no tokenizer in {args.tokenizer}")
    else:
        tokenizer = word_tokenizer(lines, tokenizer_dir)
    segments = read_segments(args.train, tokenizer, args.doc_boundary, args.tokens_per_sample)
    largest_id = int(segments.stream.max())
    if largest_id >= len(tokenizer):  # the model's vocabulary is len(tokenizer)
        parser.error(f"the tokenizer in {tokenizer_dir} gives token id {largest_id} but has "
                     f"{len(tokenizer)} tokens: give a tokenizer whose ids run 0..len-1")
    torch.manual_seed(args.seed)
    model = transformers.AutoModelForCausalLM.from_config(gpt2_config(len(tokenizer), args))
    batches = None
    if args.memory == "long":
        batches = ConsecutiveBatches(segments, args.consecutive_segments, args.batch_size, args.seed)
    elif args.memory == "ext":
        exclude = [tokenizer.convert_tokens_to_ids(UNKNOWN)] if UNKNOWN in tokenizer.get_vocab() else []
        batches = BM25Batches(segments, args.batch_size, args.bm25_k, exclude, args.seed, progress=True)
    trime_loss = TrimeLoss(model, args.memory, ce_warmup_steps=0 if args.memory == "none" else args.ce_warmup_steps,
                           local_drop_prob=args.local_drop_prob, seed=args.seed)
    checkpoints = os.path.join(args.out, "checkpoints")
    training = transformers.TrainingArguments(
        output_dir=checkpoints, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, lr_scheduler_type="inverse_sqrt", warmup_steps=args.warmup_steps,
        adam_beta2=0.98, max_grad_norm=0.1, seed=args.seed, logging_steps=50, save_steps=args.save_steps,
        save_total_limit=1, report_to=[], use_cpu=args.cpu, disable_tqdm=True)
    trainer = TrimeTrainer(model=model, args=training, train_dataset=segments, trime_loss=trime_loss,
                           train_batches=batches)
    trainer.remove_callback(transformers.PrinterCallback)  # its lines wait in stdout's buffer
    trainer.add_callback(ProgressLines())
    resume = bool(glob.glob(os.path.join(checkpoints, "checkpoint-*")))
    start = time.time()
    output = trainer.train(resume_from_checkpoint=resume or None)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    losses = [entry for entry in trainer.state.log_history if "loss" in entry]
    record = {"command": command,
              "parameters": sum(p.numel() for p in model.parameters()), "segments": len(segments),
              "steps": trainer.state.global_step, "resumed": resume,
              "seconds_this_run": round(time.time() - start, 1),
              "train_runtime": output.metrics.get("train_runtime"), "last_logged": losses[-1] if losses else None}
    with open(os.path.join(args.out, "train.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(f"trained {record['parameters']:,} parameters for {record['steps']} steps; saved to {args.out}")
