"""`trime-prepare-translation`: raw parallel text -> Moses tokens -> joint BPE -> fairseq binaries.

The steps of fairseq's ``prepare-iwslt14.sh`` (paper §5.4, Appendix D) with pip packages instead of
a Moses checkout: ``sacremoses`` (Moses' tokenizer and punctuation normaliser, Python), optional
lower-casing, ``subword-nmt`` (joint BPE learnt on the training text of both languages), then
``fairseq-preprocess`` with one dictionary per language. Each step writes its files atomically
and is skipped when its output exists, so an interrupted run resumes.

    trime-prepare-translation RAW OUT -s de -t en --train train --valid val --test test_2016_flickr
    fairseq-train OUT/bin --user-dir $(trime-user-dir) --task trime_translation -s de -t en ...

RAW holds ``{split}.{lang}`` or ``{split}.{lang}.gz`` (one sentence a line, line i of one language
translating line i of the other).
"""

import argparse
import gzip
import logging
import os

from trime.cli.parsing import HelpFormatter
from trime.cli.preprocess import fairseq_preprocess
from trime.errors import console_script
from trime.files import open_whole

logger = logging.getLogger("trime.prepare_translation")


def _raw_path(raw_dir, split, lang):
    for name in (f"{split}.{lang}", f"{split}.{lang}.gz"):
        path = os.path.join(raw_dir, name)
        if os.path.isfile(path):
            return path
    return None


def read_lines(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def write_lines(path, lines):
    with open_whole(path, encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def tokenize(lines, lang, lowercase):
    """Moses punctuation normalisation and tokenisation (sacremoses), escaping off."""
    from sacremoses import MosesPunctNormalizer, MosesTokenizer

    normalizer, tokenizer = MosesPunctNormalizer(lang=lang), MosesTokenizer(lang=lang)
    out = []
    for line in lines:
        text = tokenizer.tokenize(normalizer.normalize(line), escape=False, return_str=True)
        out.append(text.lower() if lowercase else text)
    return out


def apply_joint_bpe(out, langs, roles, merges):
    """Joint BPE (subword-nmt) learnt on ``out/train.tok.{both langs}``, applied to every
    ``out/{role}.tok.{lang}`` -> ``out/{role}.{lang}``; each file skipped when it exists."""
    from subword_nmt.apply_bpe import BPE
    from subword_nmt.learn_bpe import learn_bpe

    codes = os.path.join(out, "bpe.codes")
    if not os.path.exists(codes):
        joint = [line for lang in langs for line in read_lines(os.path.join(out, f"train.tok.{lang}"))]
        with open_whole(codes, encoding="utf-8") as f:
            learn_bpe(joint, f, merges)
        logger.info(f"learnt {merges:,} joint BPE merges -> {codes}")
    with open(codes, encoding="utf-8") as f:
        bpe = BPE(f)
    for role in roles:
        for lang in langs:
            out_path = os.path.join(out, f"{role}.{lang}")
            if not os.path.exists(out_path):
                lines = read_lines(os.path.join(out, f"{role}.tok.{lang}"))
                write_lines(out_path, [bpe.process_line(line) for line in lines])


def binarise(out, langs, roles, workers):
    """``fairseq-preprocess`` of ``out/{train,valid,test*}.{lang}`` into ``out/bin``, one dictionary
    per language (as the authors' IWSLT'14 recipe); skipped when done (``trime.cli.preprocess``)."""
    return fairseq_preprocess([
        "--source-lang", langs[0], "--target-lang", langs[1],
        "--trainpref", os.path.join(out, "train"), "--validpref", os.path.join(out, "valid"),
        "--testpref", ",".join(os.path.join(out, role) for role in roles if role.startswith("test")),
        "--workers", workers], os.path.join(out, "bin"))


@console_script
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="trime-prepare-translation", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog="Example (Multi30k De-En): trime-prepare-translation multi30k/raw out -s de -t en "
               "--train train --valid val --test test_2016_flickr",
        formatter_class=HelpFormatter)
    parser.add_argument("raw", help="folder of raw parallel text: {split}.{lang}[.gz]")
    parser.add_argument("out", help="output folder: tokenised and BPE text, bpe.codes, bin/")
    parser.add_argument("--source-lang", "-s", required=True, metavar="S",
                        help="source language: the suffix of its files (e.g. de)")
    parser.add_argument("--target-lang", "-t", required=True, metavar="T",
                        help="target language: the suffix of its files (e.g. en)")
    parser.add_argument("--train", default="train", help="training split prefix (BPE is learnt on it)")
    parser.add_argument("--valid", default="valid", help="validation split prefix")
    parser.add_argument("--test", default="test", help="test split prefixes, comma-separated")
    parser.add_argument("--bpe-merges", type=int, default=10000,
                        help="joint BPE merge operations (prepare-iwslt14.sh: 10,000)")
    parser.add_argument("--lowercase", action="store_true",
                        help="lower-case after tokenising (prepare-iwslt14.sh does)")
    parser.add_argument("--workers", type=int, default=2, help="fairseq-preprocess workers")
    args = parser.parse_args(argv)
    langs = (args.source_lang, args.target_lang)
    if args.source_lang == args.target_lang:
        parser.error("--source-lang and --target-lang must differ")
    if args.bpe_merges < 1:
        parser.error(f"--bpe-merges must be >= 1, got {args.bpe_merges}")
    splits = {"train": args.train, "valid": args.valid}
    tests = [name for name in args.test.split(",") if name]
    for i, name in enumerate(tests):
        splits["test" if i == 0 else f"test{i}"] = name
    raw = {}
    for role, split in splits.items():
        for lang in langs:
            path = _raw_path(args.raw, split, lang)
            if path is None:
                parser.error(f"no {split}.{lang} or {split}.{lang}.gz in {args.raw!r} (the {role} "
                             f"split; choose it with --{role.rstrip('0123456789')})")
            raw[role, lang] = path
    counts, raw_lines = {}, {key: read_lines(path) for key, path in raw.items()}
    for role, split in splits.items():
        lengths = {lang: len(raw_lines[role, lang]) for lang in langs}
        if len(set(lengths.values())) != 1:
            parser.error(f"{split}: {lengths[langs[0]]:,} lines in {langs[0]}, {lengths[langs[1]]:,} "
                         f"in {langs[1]}: the two sides must be line-aligned")
        counts[role] = lengths[langs[0]]
        if counts[role] == 0:
            parser.error(f"{split} is empty")
    for (role, lang), path in raw.items():  # an empty side would binarise to a lone </s>
        empty = [i + 1 for i, line in enumerate(raw_lines[role, lang]) if not line.strip()]
        if empty:
            parser.error(f"{path}: line {empty[0]} is empty ({len(empty):,} empty lines); "
                         "remove those pairs from both sides first")
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO)
    os.makedirs(args.out, exist_ok=True)

    # 1. Moses tokens (and lower case)
    for (role, lang), path in raw.items():
        tok = os.path.join(args.out, f"{role}.tok.{lang}")
        if not os.path.exists(tok):
            lines = raw_lines[role, lang]
            write_lines(tok, tokenize(lines, lang, args.lowercase))
            logger.info(f"tokenised {path} -> {tok} ({len(lines):,} lines)")

    apply_joint_bpe(args.out, langs, list(splits), args.bpe_merges)
    bin_dir = binarise(args.out, langs, list(splits), args.workers)
    summary = ", ".join(f"{role} ({splits[role]}) {n:,}" for role, n in counts.items())
    logger.info(f"pairs: {summary}; binaries in {bin_dir}")
    print(bin_dir)


if __name__ == "__main__":
    main()
