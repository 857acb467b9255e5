"""`trime-bm25-batches`: training batches of BM25-similar segments (paper §4.3, Appendix B).

Algorithm 1 packs training segments that share rare words into the same batch, so that
the in-batch memory (--memory ext) holds useful neighbours. Steps: the training
segments (``trime.lm.bm25_batches.segment_token_ids``), their exact BM25 neighbours
(``trime.core.bm25``), the greedy chain and its batches (``trime.core.batching``), the
file (``trime.lm.bm25_batches.save_bm25_batches``). With --source-lang/--target-lang the
same over the target sentences of translation pairs, written as the chain's order
(``trime.mt.bm25_order``): fairseq's --max-tokens batching cuts it at training time.
"""

import argparse
import logging
import os
import time

import numpy as np

from trime.core.batching import (bm25_chain, chain_batches, in_batch_target_coverage,
                                 length_buckets, padding_fraction)
from trime.core.bm25 import BACKENDS, bm25_neighbours
from trime.cli.parsing import HelpFormatter
from trime.errors import console_script

logger = logging.getLogger("trime.bm25")
RARE_COUNT = 100  # "rare" targets in the in-batch coverage report: train count <= this
# translation: Algorithm 1 chains the pairs of each of this many length buckets apart. On Multi30k
# (--max-tokens 4096) one bucket (the plain chain) leaves 51.8% of a batch padding (half of
# vanilla's target tokens per update), 16 leave 8.9%, with 40.9% of rare target tokens in another
# sentence of the batch (plain chain 55.6%, fairseq's length-sorted batches 28.1%)
LENGTH_BUCKETS = 16


EPILOG = """\
The file is for training with Algorithm 1's batches (paper Appendix B):

    fairseq-train DATA --user-dir $(trime-user-dir) --task trime_lm \\
        --tokens-per-sample L --batch-size B --batching bm25 --bm25-batches FILE ...

or, made with --source-lang S --target-lang T (the target sentences of translation pairs,
paper §5.4; no L or B: fairseq's --max-tokens cuts the chain into batches):

    fairseq-train DATA --user-dir $(trime-user-dir) --task trime_translation -s S -t T \\
        --batching bm25 --bm25-batches FILE --criterion trime_mt_loss ...

--tokens-per-sample must equal the training one (segment i of this file is training
example i); --batch-size is the number of segments per batch (the training
--batch-size). The file records L, the segment count and a checksum of dict.txt, and
training refuses a file made for other data.

BM25: each segment is a query (its distinct terms, each once) against all the
others; k1, b as given, Lucene's IDF; <s>, <pad>, </s>, <unk> are not terms. The
chain starts at a random segment (--seed) and goes to the most similar unused one
of its k neighbours, restarting at a random unused segment when none is left.
"""


@console_script
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="trime-bm25-batches", epilog=EPILOG,
        description="Pack training segments into batches of BM25-similar segments "
                    "(TRIME, Appendix B, Algorithm 1) and write them to a JSON file.",
        formatter_class=HelpFormatter)
    parser.add_argument("data", help="fairseq-preprocess output directory: --only-source for a "
                                     "language model (dict.txt and SPLIT.bin/.idx), or of parallel "
                                     "data with --source-lang/--target-lang")
    parser.add_argument("--split", default="train", help="binarised split to pack (default: train)")
    parser.add_argument("--tokens-per-sample", type=int, metavar="L",
                        help="segment length: must equal the training --tokens-per-sample "
                             "(language models)")
    parser.add_argument("--k", type=int, default=20,
                        help="BM25 neighbours retrieved per segment or sentence (default: 20)")
    parser.add_argument("--batch-size", type=int, metavar="B",
                        help="segments per batch (the training --batch-size; language models)")
    parser.add_argument("--source-lang", "-s", metavar="S",
                        help="translation: the source language of the pairs (with --target-lang)")
    parser.add_argument("--target-lang", "-t", metavar="T",
                        help="translation: the target language; BM25 runs on its sentences")
    parser.add_argument("--length-buckets", type=int, default=None, metavar="N",
                        help="translation: chain the pairs of each of N buckets of similar length "
                             "apart (equal counts, by length), so that --max-tokens batches hold "
                             "BM25-similar pairs of similar length: less padding, more target "
                             f"tokens per batch; 1 = one chain over all pairs (default: {LENGTH_BUCKETS})")
    parser.add_argument("--report-max-tokens", type=int, default=4096, metavar="N",
                        help="translation: the --max-tokens of the batches whose in-batch target "
                             "coverage is reported (the file does not depend on it)")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the chain's random restarts (default: 1)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="where to write the batches, or a translation order (JSON; "
                             "written atomically)")
    parser.add_argument("--k1", type=float, default=1.5, metavar="k1",
                        help="BM25 k1 (default: 1.5)")
    parser.add_argument("--b", type=float, default=0.75, metavar="b",
                        help="BM25 b (default: 0.75)")
    parser.add_argument("--backend", default="matrix", choices=BACKENDS,
                        help="how the exact BM25 scores are computed: matrix (dense + sparse "
                             "products, fast) or bm25s (the bm25s library, slow on large data); "
                             "same neighbours")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.data):
        parser.error(f"data directory {args.data!r} does not exist")
    for name, value in (("--k", args.k), ("--tokens-per-sample", args.tokens_per_sample),
                        ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            parser.error(f"{name} must be >= 1, got {value}")
    if args.k1 < 0 or not 0 <= args.b <= 1:
        parser.error(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1 = {args.k1}, b = {args.b}")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        parser.error(f"output directory {out_dir!r} does not exist")
    if args.source_lang or args.target_lang:
        return _translation(parser, args)
    if args.length_buckets is not None or args.report_max_tokens != 4096:
        parser.error("--length-buckets and --report-max-tokens are for translation pairs (with "
                     "--source-lang/--target-lang): a language model's batches are --batch-size "
                     "segments of one length")
    if args.tokens_per_sample is None or args.batch_size is None:
        parser.error("a language model's batches need --tokens-per-sample L and --batch-size B "
                     "(the training ones); for translation pairs give --source-lang and "
                     "--target-lang instead")
    if not os.path.isfile(os.path.join(args.data, "dict.txt")):
        parser.error(f"no dict.txt in {args.data!r}: point DATA at the --destdir of "
                     "`fairseq-preprocess --only-source --trainpref TEXT --destdir DATA`")
    if not os.path.isfile(os.path.join(args.data, args.split + ".bin")):
        parser.error(f"no {args.split}.bin/.idx in {args.data!r}: binarise that split with "
                     "fairseq-preprocess, or choose another --split")

    _log_to_stderr()
    from fairseq.data import Dictionary

    from trime.extmem.fingerprints import dictionary_checksum
    from trime.lm.bm25_batches import save_bm25_batches, segment_token_ids, special_token_ids

    started = time.perf_counter()
    dictionary = Dictionary.load(os.path.join(args.data, "dict.txt"))
    segments = segment_token_ids(args.data, args.split, args.tokens_per_sample, dictionary)
    num = len(segments)
    logger.info(f"{num:,} segments of {args.tokens_per_sample} tokens "
                f"({sum(len(s) for s in segments):,} tokens) from {args.data}/{args.split} "
                f"in {time.perf_counter() - started:.1f} s")
    if num < 2:
        parser.error(f"{args.split} has {num} segment(s) of {args.tokens_per_sample} tokens: "
                     "nothing to pack")
    excluded = special_token_ids(dictionary)
    order, k, seconds = _neighbours_and_chain(segments, args, excluded, "segments")
    batches = chain_batches(order, args.batch_size)
    logger.info(f"{len(batches):,} batches of {args.batch_size} segments")
    # §4.3's point, measured: how often a target occurs in the batch's other segments (the
    # in-batch memory of --memory ext), for these batches and for random ones of the same size
    counts = np.array(dictionary.count)
    rare = counts <= RARE_COUNT
    random_batches = chain_batches(np.random.default_rng(args.seed).permutation(num), args.batch_size)
    coverage = {"bm25": in_batch_target_coverage(segments, batches, rare),
                "random": in_batch_target_coverage(segments, random_batches, rare),
                "rare": f"train count <= {RARE_COUNT}"}
    logger.info("targets found in the batch's other segments: "
                + "; ".join(f"{name} batches {c['all']:.1%} of all tokens, {c['rare']:.1%} of rare "
                            f"ones (train count <= {RARE_COUNT})"
                            for name, c in coverage.items() if name != "rare"))
    save_bm25_batches(
        args.output, batches, in_batch_coverage=coverage, data=args.data, split=args.split,
        tokens_per_sample=args.tokens_per_sample, num_segments=num,
        dictionary_checksum=dictionary_checksum(dictionary), k=k, k1=args.k1, b=args.b,
        excluded_tokens=[dictionary[i] for i in excluded], backend=args.backend,
        seed=args.seed, batch_size=args.batch_size,
        neighbour_seconds=seconds)
    logger.info(f"wrote {args.output} in {time.perf_counter() - started:.1f} s in all")


def _log_to_stderr():
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO)


def _neighbours_and_chain(sentences, args, excluded, unit, seed=None):
    """Exact BM25 neighbours of every sentence (--k of them, at most all the others) and
    Algorithm 1's chain over them: (order, k, seconds spent on the neighbours)."""
    k = min(args.k, len(sentences) - 1)
    if k < args.k:
        logger.warning(f"--k {args.k} > {len(sentences) - 1} other {unit}: using k = {k}")
    timings = {}
    neighbours = bm25_neighbours(sentences, k, args.k1, args.b, exclude_ids=excluded,
                                 backend=args.backend, progress=True, timings=timings)
    logger.info(f"BM25 neighbours (k = {k}, backend {args.backend}): index "
                f"{timings['index']:.1f} s, retrieval and top-k {timings['retrieval']:.1f} s")
    started = time.perf_counter()
    order = bm25_chain(neighbours, args.seed if seed is None else seed)
    followed = np.mean([b in neighbours[a] for a, b in zip(order, order[1:])])
    logger.info(f"Algorithm 1 chain over {len(order):,} {unit} in {time.perf_counter() - started:.1f} s: "
                f"{followed:.1%} of its steps go to a BM25 neighbour")
    return order, k, round(timings["index"] + timings["retrieval"], 2)


def _translation(parser, args):
    """The chain over the target sentences of translation pairs, written as an order."""
    if not (args.source_lang and args.target_lang):
        parser.error("translation pairs need both --source-lang and --target-lang")
    if args.tokens_per_sample is not None or args.batch_size is not None:
        parser.error("--tokens-per-sample and --batch-size are for language models: translation "
                     "batches are cut from the order by the training --max-tokens")
    src, tgt = args.source_lang, args.target_lang
    dictionaries = {lang: os.path.join(args.data, f"dict.{lang}.txt") for lang in (src, tgt)}
    for lang, path in dictionaries.items():
        if not os.path.isfile(path):
            parser.error(f"no dict.{lang}.txt in {args.data!r}: point DATA at the --destdir of "
                         f"`fairseq-preprocess --source-lang {src} --target-lang {tgt} ...`")
    _log_to_stderr()
    from fairseq.data import Dictionary

    from trime.extmem.fingerprints import dictionary_checksum
    from trime.lm.bm25_batches import special_token_ids
    from trime.mt.bm25_order import cut_like_fairseq, save_bm25_order, target_sentences

    started = time.perf_counter()
    src_dict, tgt_dict = (Dictionary.load(dictionaries[lang]) for lang in (src, tgt))
    try:
        sentences, sizes = target_sentences(args.data, args.split, src, tgt, src_dict, tgt_dict)
    except FileNotFoundError as e:
        parser.error(str(e))
    num = len(sentences)
    logger.info(f"{num:,} {src}-{tgt} pairs ({sum(len(s) for s in sentences):,} target tokens) "
                f"from {args.data}/{args.split}")
    if num < 2:
        parser.error(f"{args.split} has {num} pair(s): nothing to order")
    if args.length_buckets is None:
        args.length_buckets = LENGTH_BUCKETS
    if args.report_max_tokens < 1 or args.length_buckets < 1:
        parser.error("--report-max-tokens and --length-buckets must be >= 1")
    excluded = special_token_ids(tgt_dict)
    buckets = length_buckets(sizes, min(args.length_buckets, num // 2))
    order, seconds, bucket_ks = [], 0.0, []
    for number, ids in enumerate(buckets):  # Algorithm 1 in each bucket of similar lengths
        if len(buckets) > 1:
            logger.info(f"length bucket {number + 1} of {len(buckets)}: {len(ids):,} pairs of "
                        f"{sizes[ids].min()}-{sizes[ids].max()} tokens")
        chain, k, spent = _neighbours_and_chain([sentences[i] for i in ids], args, excluded, "pairs",
                                                seed=args.seed + number)
        order += [int(ids[i]) for i in chain]
        seconds, bucket_ks = seconds + spent, bucket_ks + [k]
    # §4.3's point for MT (§5.4): how often a target token occurs in another target sentence of
    # its batch (trime_mt_loss's memory), and how much of a batch is padding, for these batches
    # and fairseq's usual ones (pairs sorted by size, as fairseq-train orders them); EOS is left
    # out of the coverage, every sentence has it
    shuffled = np.random.default_rng(args.seed).permutation(num)
    by_length = shuffled[np.argsort(sizes[shuffled], kind="mergesort")]  # ties in random order
    words = [s[s != tgt_dict.eos()] for s in sentences]
    rare = np.array(tgt_dict.count) <= RARE_COUNT
    coverage = {}
    compared = [("bm25", order), ("length_sorted", by_length)]
    if len(buckets) > 1:  # before: one chain over all pairs, as Algorithm 1 alone orders them
        logger.info("one chain over all pairs, for the comparison:")
        compared.insert(1, ("bm25_one_chain", _neighbours_and_chain(sentences, args, excluded, "pairs")[0]))
    for name, o in compared:
        batches = cut_like_fairseq(o, sizes, args.report_max_tokens)
        coverage[name] = dict(in_batch_target_coverage(words, batches, rare),
                              padding=padding_fraction(batches, sizes), batches=len(batches))
    coverage.update(rare=f"train count <= {RARE_COUNT}", max_tokens=args.report_max_tokens)
    logger.info(f"--max-tokens {args.report_max_tokens} batches: target tokens found in another "
                "target sentence of the batch (EOS left out), and padding: "
                + "; ".join(f"{name} {c['all']:.1%} of all, {c['rare']:.1%} of rare ones, "
                            f"{c['padding']:.1%} padding ({c['batches']:,} batches)"
                            for name, c in coverage.items() if isinstance(c, dict)))
    save_bm25_order(
        args.output, order, in_batch_coverage=coverage, data=args.data, split=args.split,
        source_lang=src, target_lang=tgt, num_pairs=num,
        # k: the most neighbours a bucket used (--k, unless every bucket has fewer other pairs)
        dictionary_checksum=dictionary_checksum(tgt_dict), k=max(bucket_ks), k_per_bucket=bucket_ks,
        k1=args.k1, b=args.b, excluded_tokens=[tgt_dict[i] for i in excluded], backend=args.backend,
        seed=args.seed, length_buckets=len(buckets), neighbour_seconds=seconds)
    logger.info(f"wrote {args.output} in {time.perf_counter() - started:.1f} s in all")


if __name__ == "__main__":
    main()
