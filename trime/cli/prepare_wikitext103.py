"""`trime-prepare-wikitext103`: WikiText-103 as fairseq's examples/language_model prepares it.

    trime-prepare-wikitext103 OUT                                  # downloads the archive first
    trime-prepare-wikitext103 OUT --archive wikitext-103-v1.zip    # an archive you already have

The official ``wikitext-103-v1.zip`` (tokenised, ``<unk>`` version) is unpacked into
OUT/raw/wiki.{train,valid,test}.tokens, its token counts are compared with the published ones,
and ``fairseq-preprocess --only-source`` writes OUT/data-bin with the train dictionary (267,744
types with fairseq's special symbols), as ``prepare-wikitext-103.sh`` and the README of fairseq's
examples/language_model do. Every finished step is skipped on a rerun; a cut download resumes.
"""

import argparse
import logging
import os

from trime.cli.parsing import HelpFormatter
from trime.errors import console_script
from trime.files import open_whole

URL = "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip"
SPLITS = ("train", "valid", "test")
# published sizes (Merity et al. 2016): lines and tokens, one <eos> per line included
PUBLISHED_TOKENS = {"train": 103_227_021, "valid": 217_646, "test": 245_569}
DICTIONARY_SIZE = 267_744  # fairseq-train's "dictionary: 267744 types" (specials, padding to 8)
UNPACKED_BYTES = 540_000_000  # the three files, about

logger = logging.getLogger("trime.prepare_wikitext103")


def unpack_splits(archive: str, raw: str) -> dict:
    """wiki.{split}.tokens of the archive into ``raw`` (each through ``.partial``); {split: path}."""
    from trime.download import check_free_space, open_zip

    paths = {split: os.path.join(raw, f"wiki.{split}.tokens") for split in SPLITS}
    if all(os.path.exists(path) for path in paths.values()):
        return paths
    with open_zip(archive) as opened:
        members = {os.path.basename(name): name for name in opened.namelist()}
        missing = [os.path.basename(p) for p in paths.values() if os.path.basename(p) not in members]
        if missing:
            raise ValueError(f"{archive} lacks {', '.join(missing)}: not wikitext-103-v1.zip (the "
                             "raw-character version wikitext-103-raw-v1.zip is not what the paper used)")
        os.makedirs(raw, exist_ok=True)
        check_free_space(raw, sum(opened.getinfo(members[os.path.basename(p)]).file_size
                                  for p in paths.values()), f"unpacking {archive}")
        for path in paths.values():
            if os.path.exists(path):
                continue
            with opened.open(members[os.path.basename(path)]) as source, \
                    open_whole(path, "wb", ".partial") as out:
                while block := source.read(1 << 22):  # the CRC-32 is checked at the member's end
                    out.write(block)
    return paths


def count_tokens(path: str) -> int:
    """Whitespace tokens + one <eos> per line, as fairseq's language modelling counts them."""
    tokens = 0
    with open(path, "rb") as f:
        for line in f:
            tokens += len(line.split()) + 1
    return tokens


@console_script
def main(argv=None):
    from trime.cli.preprocess import fairseq_preprocess
    from trime.download import obtain

    parser = argparse.ArgumentParser(
        prog="trime-prepare-wikitext103", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=HelpFormatter)
    parser.add_argument("out", help="output folder: the archive (when downloaded), raw/, data-bin/")
    parser.add_argument("--archive", default=URL, metavar="PATH_OR_URL",
                        help="wikitext-103-v1.zip: a local file, or a URL (http(s):// or file://) "
                             "to download into OUT")
    parser.add_argument("--workers", type=int, default=2, help="fairseq-preprocess workers")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO)
    os.makedirs(args.out, exist_ok=True)
    raw, data_bin = os.path.join(args.out, "raw"), os.path.join(args.out, "data-bin")
    paths = {split: os.path.join(raw, f"wiki.{split}.tokens") for split in SPLITS}
    if os.path.exists(os.path.join(data_bin, "preprocess.done")):
        print(data_bin)  # every step done
        return
    if not all(os.path.exists(path) for path in paths.values()):
        archive = obtain(args.archive, args.out, extra_bytes=UNPACKED_BYTES)
        paths = unpack_splits(archive, raw)
    for split, path in paths.items():
        tokens = count_tokens(path)
        if tokens == PUBLISHED_TOKENS[split]:
            logger.info(f"{split}: {tokens:,} tokens, as published")
        else:
            logger.warning(f"{split}: {tokens:,} tokens, the published WikiText-103 has "
                           f"{PUBLISHED_TOKENS[split]:,}: not the official file")
    fairseq_preprocess(["--only-source", "--trainpref", paths["train"], "--validpref",
                        paths["valid"], "--testpref", paths["test"], "--workers", args.workers],
                       data_bin)
    from fairseq.data import Dictionary

    size = len(Dictionary.load(os.path.join(data_bin, "dict.txt")))
    if size != DICTIONARY_SIZE:
        logger.warning(f"the dictionary has {size:,} types, fairseq's WikiText-103 {DICTIONARY_SIZE:,}")
    print(data_bin)


if __name__ == "__main__":
    main()
