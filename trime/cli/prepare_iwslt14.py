"""`trime-prepare-iwslt14`: IWSLT'14 De-En as fairseq's prepare-iwslt14.sh makes it (Moses tokens,
clean-corpus-n, lower case, valid = every 23rd pair, joint BPE 10k), then fairseq binaries.

    trime-prepare-iwslt14 OUT                        # downloads de-en.tgz into OUT first
    trime-prepare-iwslt14 OUT --archive de-en.tgz    # an archive you already have

Writes OUT/{train,valid,test}.tok.{de,en} (tokenised, lower-cased), OUT/bpe.codes,
OUT/{train,valid,test}.{de,en} (BPE) and OUT/bin (fairseq-preprocess, one dictionary per
language). Every step is skipped when its output exists, so an interrupted run resumes; see
``trime.mt.iwslt14`` for the exact rules. Then: scripts/iwslt14/run.sh OUT/bin (Table 6).
"""

import argparse
import logging
import os
import tarfile

from trime.cli.parsing import HelpFormatter
from trime.download import download
from trime.errors import console_script

URL = "http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz"

logger = logging.getLogger("trime.prepare_iwslt14")


@console_script
def main(argv=None):
    from trime.cli.prepare_translation import write_lines, apply_joint_bpe, binarise
    from trime.mt.iwslt14 import LANGS, build_splits, read_archive

    parser = argparse.ArgumentParser(
        prog="trime-prepare-iwslt14", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=HelpFormatter)
    parser.add_argument("out", help="output folder")
    parser.add_argument("--archive", default=None,
                        help="IWSLT'14's de-en.tgz (default: OUT/de-en.tgz, downloaded from --url "
                             "when absent)")
    parser.add_argument("--url", default=URL, help="where to download de-en.tgz from")
    parser.add_argument("--bpe-merges", type=int, default=10000, help="joint BPE merges")
    parser.add_argument("--workers", type=int, default=2, help="fairseq-preprocess workers")
    args = parser.parse_args(argv)
    if args.bpe_merges < 1:
        parser.error(f"--bpe-merges must be >= 1, got {args.bpe_merges}")
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO)
    os.makedirs(args.out, exist_ok=True)
    roles = ("train", "valid", "test")
    tokenised = [os.path.join(args.out, f"{role}.tok.{lang}") for role in roles for lang in LANGS]
    if not all(os.path.exists(path) for path in tokenised):
        archive = args.archive or os.path.join(args.out, "de-en.tgz")
        if not os.path.exists(archive):
            if args.archive:
                parser.error(f"--archive {archive}: no such file")
            logger.info(f"downloading {args.url} -> {archive}")
            try:
                download(args.url, archive)
            except OSError as error:
                parser.error(f"cannot download {args.url} ({error}): download de-en.tgz "
                             "yourself and pass --archive PATH")
        try:
            splits = build_splits(read_archive(archive))
        except (ValueError, OSError, EOFError, tarfile.TarError) as error:
            parser.error(f"{archive}: {error}")
        for (role, lang), lines in splits.items():
            write_lines(os.path.join(args.out, f"{role}.tok.{lang}"), lines)
        logger.info("pairs: " + ", ".join(f"{role} {len(splits[role, 'de']):,}" for role in roles))
    apply_joint_bpe(args.out, LANGS, roles, args.bpe_merges)
    print(binarise(args.out, LANGS, roles, args.workers))


if __name__ == "__main__":
    main()
