"""`trime-merge-dstore OUT SHARD...`: one datastore from the shards of a split
(``trime.extmem.datastore.merge_shards``)."""

import argparse
import logging

from trime.cli.parsing import HelpFormatter
from trime.errors import console_script


@console_script
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="trime-merge-dstore",
        description="Merge the shards of a datastore, saved by fairseq-eval-lm --save-dstore DIR.I\n"
                    "--num-shards N --shard-id I (one process or GPU each), into one datastore.\n"
                    "Every row of the split must be in exactly one shard, and all shards must\n"
                    "come from one model, dictionary, split and scoring; keys are copied in\n"
                    "chunks, never all in memory. Then: trime-build-index OUT.",
        epilog="example:\n  trime-merge-dstore dstore dstore.0 dstore.1 dstore.2 dstore.3",
        formatter_class=HelpFormatter)
    parser.add_argument("out", help="the merged datastore folder (must not exist)")
    parser.add_argument("shards", nargs="+", metavar="SHARD", help="the shard folders, any order")
    parser.add_argument("--no-progress-bar", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO)
    from trime.extmem.datastore import merge_shards

    print(merge_shards(args.out, args.shards, progress=not args.no_progress_bar))


if __name__ == "__main__":
    main()
