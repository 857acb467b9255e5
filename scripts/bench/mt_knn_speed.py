"""Benchmark: fairseq-generate's speed with kNN-MT vs without memory (one run, printed ratio).

On one checkpoint, the same sentences and the same beam search (``task.build_generator`` +
``task.inference_step``, what fairseq-generate runs), prints sentences/s without memory and with
kNN-MT (``--eval-memory ext --eval-scoring knnlm``, IVFPQ index, k = --knn-k, nprobe 32), and
their ratio: the median of per-round ratios over --rounds alternating rounds. The mean output
length of each is printed too: a model that rarely ends a sentence decodes fewer sentences/s.

The datastore must exist with an l2 index (``trime-mt-datastore`` then ``trime-build-index
--metric l2``):

    trime-mt-datastore DATA --path CKPT -s de -t en --save-dstore DSTORE
    trime-build-index DSTORE --metric l2 --index-type ivfpq
    python scripts/bench/mt_knn_speed.py DATA --path CKPT -s de -t en --dstore DSTORE
"""

import argparse
import statistics
import time
import warnings

warnings.filterwarnings("ignore")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("--path", required=True)
    parser.add_argument("--dstore", required=True, help="datastore with an l2 index")
    parser.add_argument("--source-lang", "-s", required=True)
    parser.add_argument("--target-lang", "-t", required=True)
    parser.add_argument("--gen-subset", default="valid")
    parser.add_argument("--sentences", type=int, default=200, help="sentences decoded per setting")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--knn-k", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()

    import torch
    from fairseq import checkpoint_utils, options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import trime

    def setup(memory):
        argv = [args.data, "--user-dir", trime.USER_DIR, "--task", "trime_translation",
                "-s", args.source_lang, "-t", args.target_lang, "--path", args.path,
                "--beam", str(args.beam), "--batch-size", str(args.batch_size), *memory]
        cfg = convert_namespace_to_omegaconf(
            options.parse_args_and_arch(options.get_generation_parser(), argv))
        task = tasks.setup_task(cfg.task)
        models, _ = checkpoint_utils.load_model_ensemble([args.path], task=task)
        use_cuda = torch.cuda.is_available() and not args.cpu
        if use_cuda:
            models[0].cuda()
        task.load_dataset(args.gen_subset)
        dataset = task.dataset(args.gen_subset)
        batches = list(task.get_batch_iterator(
            dataset=dataset, max_sentences=args.batch_size,
            max_positions=utils.resolve_max_positions(task.max_positions(), models[0].max_positions()),
        ).next_epoch_itr(shuffle=False))
        kept, total = [], 0
        for sample in batches:  # the first --sentences sentences, in fairseq's order
            if total >= args.sentences:
                break
            kept.append(utils.move_to_cuda(sample) if use_cuda else sample)
            total += sample["nsentences"]
        return task, models, task.build_generator(models, cfg.generation), kept, total

    settings = {
        "none": setup([]),
        "knn-mt": setup(["--eval-memory", "ext", "--dstore", args.dstore, "--eval-scoring", "knnlm",
                         "--knn-sim", "l2", "--knn-k", str(args.knn_k), "--knn-lambda", "0.2",
                         "--knn-temp", "10"]),
    }

    lengths = {}

    def timed(name):
        task, models, generator, batches, total = settings[name]
        start = time.perf_counter()
        tokens = 0
        with torch.no_grad():
            for sample in batches:
                hypos = task.inference_step(generator, models, sample)
                tokens += sum(len(h[0]["tokens"]) for h in hypos)
        lengths[name] = tokens / total
        return total / (time.perf_counter() - start)

    timed("none"), timed("knn-mt")  # warm-up: index pages, allocator
    rates = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name in settings:
            rates[name].append(timed(name))
    ratios = [k / n for k, n in zip(rates["knn-mt"], rates["none"])]
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    print(f"{settings['none'][4]} sentences, beam {args.beam}, batch {args.batch_size}, {device}, "
          f"{torch.get_num_threads()} threads")
    for name, values in rates.items():  # sentences/s depends on how long the outputs are
        print(f"{name:8s} {statistics.median(values):8.2f} sentences/s, "
              f"{lengths[name]:.1f} output tokens per sentence")
    print(f"ratio knn-mt / none (median of {args.rounds} rounds): {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
