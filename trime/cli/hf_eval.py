"""`trime-hf-eval`: perplexity of a Hugging Face causal LM on a text file with TRIME's evaluation
memory (local, long, external; paper §4, Eq. 6-9) or the continuous-cache / kNN-LM baselines, or
a datastore of the file for external memory (--save-dstore).

MODEL is a folder written by ``save_pretrained`` (or a hub name, with internet); the tokenizer is
MODEL's unless --tokenizer is given. The file is split into documents (--doc-boundary), each
tokenised, concatenated and cut into segments of --tokens-per-sample targets scored in stream
order (``trime.hf.evaluation``). The memory options are fairseq-eval-lm's, with the same defaults.

    trime-hf-eval runs/gpt2-trime wikitext-2/valid.txt --eval-memory local,long --long-memory-size 4096
    trime-hf-eval runs/gpt2-trime wikitext-2/train.txt --save-dstore dstore && trime-build-index dstore
    trime-hf-eval runs/gpt2-trime wikitext-2/valid.txt --eval-memory local,long,ext --dstore dstore \\
        --knn-lambda 0.3 --knn-temp 1
"""

import argparse
import json

from trime.cli.parsing import HelpFormatter
from trime.errors import console_script, one_line

# every evaluation option of fairseq-eval-lm --task trime_lm that applies to a transformers model
EVAL_OPTIONS = ("eval_memory", "memory_temp", "long_memory_size", "long_memory_reset", "eval_scoring",
                "cache_lambda", "cache_theta", "cache_key", "dstore", "knn_k", "knn_nprobe",
                "knn_device", "knn_sim", "knn_lambda", "knn_temp", "knn_exact_scores",
                "knn_interp_memory", "save_dstore")


@console_script
def main(argv=None):
    from trime.core.documents import DOC_BOUNDARIES
    from trime.settings import EvalOptions, EvalSettings, add_argparse_options

    parser = argparse.ArgumentParser(prog="trime-hf-eval", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=HelpFormatter)
    parser.add_argument("model", help="a transformers causal LM: a save_pretrained folder")
    parser.add_argument("text", help="the text file to score (or to save as a datastore)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: MODEL's)")
    parser.add_argument("--tokens-per-sample", type=int, default=512, metavar="L",
                        help="targets per segment")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="segments per batch")
    parser.add_argument("--doc-boundary", choices=DOC_BOUNDARIES, default="title",
                        help="how documents are delimited in the file (long memory never crosses "
                             "one): title = a WikiText ' = Title = ' line; empty-line; none")
    parser.add_argument("--ffn-module", default=None,
                        help="the module whose input is g(c), for a model outside trime.hf's table")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even when a GPU is available")
    parser.add_argument("--out", default=None, help="also write the result to this JSON file")
    add_argparse_options(parser, EvalOptions, EVAL_OPTIONS)
    args = parser.parse_args(argv)
    if args.tokens_per_sample < 1 or args.batch_size < 1:
        parser.error("--tokens-per-sample and --batch-size must be >= 1")
    try:
        settings = EvalSettings(**{name: getattr(args, name) for name in EVAL_OPTIONS})
    except ValueError as e:
        parser.error(one_line(e))

    import torch
    import transformers

    from trime.hf.data import read_segments
    from trime.hf.evaluation import Vocabulary, evaluate, save_datastore

    # in fp32 whatever the stored dtype (a trime-keep-model copy holds fp16 weights; transformers 5
    # loads a model in its stored dtype by default)
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model).float()
    if torch.cuda.is_available() and not args.cpu:
        model.cuda()
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    segments = read_segments(args.text, tokenizer, args.doc_boundary, args.tokens_per_sample)
    if settings.save_dstore:
        if settings.eval_memory != "none":
            parser.error("--save-dstore writes a datastore and scores nothing: drop --eval-memory")
        save_datastore(model, segments, settings.save_dstore, args.batch_size, args.ffn_module,
                       tokenizer, split=args.text)
        print(f"datastore of {len(segments.stream) - 1:,} tokens written to {settings.save_dstore}; "
              f"index it: trime-build-index {settings.save_dstore} --metric {settings.knn_sim or 'ip'}")
        return
    retriever = None
    if settings.uses_ext:
        from trime.extmem.datastore import Datastore
        from trime.extmem.retrieval import retriever_for
        from trime.hf.architectures import ffn_input_dim

        dim = ffn_input_dim(model, args.ffn_module)
        retriever = retriever_for(Datastore.open(settings.dstore, Vocabulary(model, tokenizer), dim),
                                  settings)
    result = evaluate(model, segments, settings, retriever, args.batch_size, args.ffn_module)
    result.update(model=args.model, text=args.text, settings=settings.describe())
    print(f"{settings.describe()}: perplexity {result['perplexity']:.2f} over {result['tokens']:,} "
          f"tokens ({result['loss']:.4f} bits per token)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
