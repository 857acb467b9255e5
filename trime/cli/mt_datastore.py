"""`trime-mt-datastore`: the datastore of a translation model over parallel data (kNN-MT and
TrimeMT_ext's external memory, ``trime.mt.datastore``).

fairseq has no command for this: ``fairseq-validate`` rebuilds the task stored in the
checkpoint (so a model trained with ``--task translation`` never reaches trime's task), and
``fairseq-generate --score-reference`` rescores hypotheses. This command sets up ``--task
trime_translation`` from its own arguments, loads the checkpoint into it (as fairseq-generate
does), and runs one teacher-forced pass over a split.

    trime-mt-datastore DATA --path ckpt/checkpoint_best.pt -s de -t en --subset train \\
        --save-dstore dstore
    trime-build-index dstore --metric l2     # then decode with the datastore
"""

import argparse
import logging
import os

from trime.cli.parsing import HelpFormatter
from trime.errors import console_script

logger = logging.getLogger("trime.mt_datastore")


@console_script
def main(argv=None):
    from trime.settings import DECODER_KEYS

    parser = argparse.ArgumentParser(
        prog="trime-mt-datastore", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        formatter_class=HelpFormatter)
    parser.add_argument("data", help="fairseq-preprocess output directory of the parallel data "
                                     "(dict.S.txt, dict.T.txt and the binarised split)")
    parser.add_argument("--path", required=True, help="the translation checkpoint")
    parser.add_argument("--source-lang", "-s", required=True, metavar="S",
                        help="source language: the suffix of its files (e.g. de)")
    parser.add_argument("--target-lang", "-t", required=True, metavar="T",
                        help="target language: the suffix of its files (e.g. en)")
    parser.add_argument("--subset", default="train", help="the split whose target tokens are saved")
    parser.add_argument("--save-dstore", required=True, metavar="DIR",
                        help="the new datastore folder (written to DIR.partial, renamed when "
                             "complete)")
    parser.add_argument("--mt-key", choices=DECODER_KEYS, default=None,
                        help="the decoder representation saved as key (see --criterion "
                             "trime_mt_loss --mt-key). Default: the one the checkpoint was trained "
                             "with by trime_mt_loss, else final (what kNN-MT code uses)")
    parser.add_argument("--max-tokens", type=int, default=4096, help="tokens per batch")
    parser.add_argument("--num-shards", type=int, default=1,
                        help="save one of this many shards (contiguous pairs; one process or GPU "
                             "each), then join them with trime-merge-dstore OUT SHARD...")
    parser.add_argument("--shard-id", type=int, default=0, help="which shard, 0 .. --num-shards - 1")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even with a GPU")
    parser.add_argument("--fp16", action="store_true", help="run the model in half precision "
                        "(keys are saved in fp16 either way)")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.path):
        parser.error(f"no checkpoint at {args.path!r}")
    if os.path.exists(args.save_dstore):
        parser.error(f"--save-dstore {args.save_dstore!r} already exists: remove it or choose "
                     "another folder (a datastore is never overwritten in place)")
    if args.max_tokens < 1:
        parser.error(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.num_shards < 1 or not 0 <= args.shard_id < args.num_shards:
        parser.error(f"--shard-id {args.shard_id} of --num-shards {args.num_shards}: needs "
                     "0 <= shard id < shards")
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO)

    import torch
    from fairseq import checkpoint_utils, options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import trime
    from trime.mt.datastore import save_translation_datastore

    fairseq_argv = [args.data, "--user-dir", trime.USER_DIR, "--task", "trime_translation",
                    "-s", args.source_lang, "-t", args.target_lang, "--path", args.path,
                    "--gen-subset", args.subset, "--max-tokens", str(args.max_tokens)]
    cfg = convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_generation_parser(), fairseq_argv))
    utils.import_user_module(cfg.common)
    task = tasks.setup_task(cfg.task)
    try:
        models, saved_cfg = checkpoint_utils.load_model_ensemble([args.path], task=task)
    except RuntimeError as error:  # e.g. size mismatch: the checkpoint is for other dictionaries
        parser.error(f"cannot load {args.path} into a {args.source_lang}->{args.target_lang} "
                     f"model over {args.data}'s dictionaries: {error}")
    model = models[0]
    use_cuda = torch.cuda.is_available() and not args.cpu
    if args.fp16:
        model.half()
    if use_cuda:
        model.cuda()
    trained_key = getattr(saved_cfg.criterion, "mt_key", None) if saved_cfg.criterion else None
    mt_key = args.mt_key or (str(trained_key) if trained_key else "final")
    task.load_dataset(args.subset)
    dataset = task.dataset(args.subset)
    iterator = task.get_batch_iterator(
        dataset=dataset, max_tokens=args.max_tokens,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        ignore_invalid_inputs=False)
    shard = None
    if args.num_shards > 1:
        from fairseq.data import iterators

        from trime.mt.datastore import pair_shard

        shard = pair_shard(dataset.tgt_sizes, args.num_shards, args.shard_id)
        inside = [[i for i in batch if shard["item_start"] <= i < shard["item_stop"]]
                  for batch in iterator.frozen_batches]
        iterator = iterators.EpochBatchIterator(dataset, dataset.collater,
                                                [b for b in inside if b], num_workers=0)
    batches = iterator.next_epoch_itr(shuffle=False)
    if use_cuda:
        batches = (utils.move_to_cuda(sample) for sample in batches)
    logger.info(f"{args.subset}: {len(dataset):,} pairs, {int(dataset.tgt_sizes.sum()):,} target "
                f"tokens; key {mt_key}")
    path = save_translation_datastore(
        args.save_dstore, model, batches, dataset.tgt_sizes, mt_key, task.source_dictionary,
        task.target_dictionary, dict(split=args.subset, data=args.data, source_lang=args.source_lang,
                                     target_lang=args.target_lang, checkpoint=args.path), shard)
    print(path)


if __name__ == "__main__":
    main()
