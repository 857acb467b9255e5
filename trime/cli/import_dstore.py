"""`trime-import-dstore`: a datastore of knnlm, adaptive-knn-mt (the TRIME authors' MT fork)
or knn-box as a trime datastore (``trime.extmem.foreign``), with their FAISS index reused."""

import argparse
import logging
import os

from trime.cli.parsing import HelpFormatter
from trime.errors import console_script

logger = logging.getLogger("trime.import_dstore")

EPILOG = """examples:
  # knnlm (eval_lm.py --save-knnlm-dstore --dstore-mmap checkpoints/dstore, build_dstore.py)
  trime-import-dstore wt103-dstore --dict data-bin/wikitext-103/dict.txt \\
      --dstore-filename checkpoints/dstore --dstore-size 103225485 --dim 1024 \\
      --index checkpoints/knn.index
  # the TRIME authors' IWSLT'14 datastore (adaptive-knn-mt layout)
  trime-import-dstore iwslt-dstore --dict data-bin/iwslt14/dict.en.txt \\
      --source-dict data-bin/iwslt14/dict.de.txt -s de -t en \\
      --dstore-filename iwslt14-trime/dstore --dstore-size 3949114 --dim 512 --dstore-fp16 \\
      --index iwslt14-trime/dstore/knn_index_ip
  # knn-box (its datastore folder holds config.json)
  trime-import-dstore it-dstore --dict data-bin/it/dict.en.txt --source-dict \\
      data-bin/it/dict.de.txt -s de -t en --dstore-filename datastore/vanilla \\
      --index datastore/vanilla/keys.faiss_index

Then evaluate with --dstore OUT (fairseq-eval-lm --eval-memory ext ... or fairseq-generate
--task trime_translation --memory ext ...), --knn-sim the index's metric (printed here)."""


def detect_format(filename: str) -> str:
    """knnlm when PREFIX_keys.npy exists, knn-box for a folder with config.json, knn-mt for a
    folder with keys.npy."""
    if os.path.isfile(filename + "_keys.npy"):
        return "knnlm"
    if os.path.isfile(os.path.join(filename, "config.json")):
        return "knn-box"
    if os.path.isfile(os.path.join(filename, "keys.npy")):
        return "knn-mt"
    raise FileNotFoundError(
        f"{filename}: neither knnlm's {filename}_keys.npy nor a folder with keys.npy "
        "(adaptive-knn-mt) or config.json (knn-box): give the --dstore-filename the toolkit "
        "wrote (knnlm: the --dstore-mmap prefix; the others: the datastore folder)")


def model_key_dim(checkpoint: str, key_type: str) -> int:
    """The dimension of a checkpoint's keys, read from its weights: the last decoder layer's FFN
    input (``last-ffn-input``) or the output projection's input (``final``)."""
    import torch

    from trime.glue.checkpoints import allow_namespace_in_checkpoints

    allow_namespace_in_checkpoints()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    if key_type == "final":
        for name in ("decoder.output_projection.weight", "decoder.embed_out",
                     "decoder.embed_tokens.weight"):
            if name in state:
                return int(state[name].shape[1])
    else:
        ffn_inputs = sorted((int(name.split(".")[2]), tensor.shape[1]) for name, tensor in
                            state.items() if name.startswith("decoder.layers.")
                            and name.endswith(".fc1.weight"))
        if ffn_inputs:
            return int(ffn_inputs[-1][1])
    raise ValueError(f"{checkpoint}: no decoder weights that give the {key_type} key dimension")


@console_script
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="trime-import-dstore",
        description="Import a datastore written by knnlm (urvashik/knnlm), adaptive-knn-mt (and the\n"
                    "TRIME authors' MT fork) or knn-box into trime's format (fp16 keys, int32 values,\n"
                    "meta.json saying where it came from), checking every value against the\n"
                    "dictionary, and reuse their trained FAISS index (--index).\n\n"
                    "knnlm's keys must be --knn-keytype last_ffn_input (their README's datastore):\n"
                    "that is trime's g(c). The MT toolkits' keys are the decoder output (trime's\n"
                    "--mt-key final).",
        epilog=EPILOG, formatter_class=HelpFormatter)
    parser.add_argument("out", help="the trime datastore folder to write (must not exist)")
    parser.add_argument("--dict", required=True,
                        help="the dictionary the datastore's values index: the LM's dict.txt, or "
                             "the target dict.TGT.txt of a translation model")
    parser.add_argument("--dstore-filename", required=True, metavar="PATH",
                        help="knnlm: the prefix of PREFIX_keys.npy / PREFIX_vals.npy (its "
                             "--dstore-mmap / --dstore-filename); adaptive-knn-mt and knn-box: "
                             "the datastore folder")
    parser.add_argument("--format", choices=("auto", "knnlm", "knn-mt", "knn-box"), default="auto",
                        help="who wrote it; auto: knnlm when PREFIX_keys.npy exists, knn-box for a "
                             "folder with config.json, knn-mt for a folder with keys.npy")
    parser.add_argument("--dstore-size", type=int, default=None,
                        help="rows, as given to knnlm / save_datastore.py (their files have no "
                             "header; knn-box's config.json says it)")
    parser.add_argument("--dim", type=int, default=None,
                        help="key dimension (knnlm, knn-mt; e.g. 1024 for the WikiText-103 "
                             "models, 512 for IWSLT'14)")
    parser.add_argument("--dstore-fp16", action="store_true",
                        help="the datastore was saved with --dstore-fp16 (fp16 keys; knnlm: "
                             "int16 values)")
    parser.add_argument("--index", action="append", default=[], metavar="FILE",
                        help="their trained FAISS index over these keys (knnlm's knn.index, "
                             "knn_index_ip / knn_index_l2, keys.faiss_index): hard-linked (or "
                             "copied) into OUT instead of training a new one with "
                             "trime-build-index; its metric becomes the --knn-sim to evaluate with. "
                             "Repeat it for an inner-product and an L2 index")
    parser.add_argument("--keys", choices=("auto", "copy", "link"), default="auto",
                        help="copy = fp16 keys inside OUT (a self-contained folder); link = OUT "
                             "reads their fp16 key file in place (no second copy of the keys, "
                             "which must stay where they are); auto = link fp16 keys, copy "
                             "(convert) float32 ones")
    parser.add_argument("--source-dict", default=None,
                        help="translation datastores: the source dictionary dict.SRC.txt")
    parser.add_argument("-s", "--source-lang", default=None, help="translation: source language")
    parser.add_argument("-t", "--target-lang", default=None, help="translation: target language")
    parser.add_argument("--path", default=None, metavar="CKPT",
                        help="the checkpoint that will search this datastore: its key dimension "
                             "must equal the datastore's")
    parser.add_argument("--no-progress-bar", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO)

    from trime.extmem import foreign
    from trime.extmem.datastore import KEY_TYPE
    from trime.extmem.fingerprints import dictionary_checksum

    def load_dictionary(path):
        if not os.path.isfile(path):
            parser.error(f"no dictionary {path}: give the model's fairseq dict.txt")
        from fairseq.data import Dictionary

        return Dictionary.load(path)

    if os.path.exists(args.out):
        parser.error(f"{args.out} exists: a datastore is never overwritten; choose a new folder")
    fmt = detect_format(args.dstore_filename) if args.format == "auto" else args.format
    if fmt == "knn-box":
        for name in ("dstore_size", "dim", "dstore_fp16"):
            if getattr(args, name):
                parser.error(f"--{name.replace('_', '-')}: knn-box's config.json gives sizes and "
                             "dtypes; drop it")
        source = foreign.open_knn_box(args.dstore_filename)
    else:
        if args.dstore_size is None or args.dim is None:
            parser.error(f"{fmt}'s files have no header: give --dstore-size and --dim (and "
                         "--dstore-fp16 if it was saved so), as for their scripts")
        if args.dstore_size < 1 or args.dim < 1:
            parser.error("--dstore-size and --dim must be >= 1")
        opener = foreign.open_knnlm if fmt == "knnlm" else foreign.open_knn_mt
        source = opener(args.dstore_filename, args.dstore_size, args.dim, args.dstore_fp16)

    dictionary = load_dictionary(args.dict)
    meta = {"dictionary_size": len(dictionary), "dictionary_checksum": dictionary_checksum(dictionary)}
    translation = {"source_dict": args.source_dict, "source_lang": args.source_lang,
                   "target_lang": args.target_lang}
    if source.kind == "translation":
        from trime.mt.datastore import KIND

        missing = [name for name, value in translation.items() if not value]
        if missing:
            parser.error(f"a {fmt} datastore is of a translation model: give "
                         + ", ".join("--" + name.replace("_", "-") for name in missing))
        source_dictionary = load_dictionary(args.source_dict)
        meta.update(kind=KIND, source_lang=args.source_lang, target_lang=args.target_lang,
                    source_dictionary_size=len(source_dictionary),
                    source_dictionary_checksum=dictionary_checksum(source_dictionary))
        key_type = "final"
    else:
        given = [name for name, value in translation.items() if value]
        if given:
            parser.error(f"a knnlm datastore is of a language model: drop --{given[0].replace('_', '-')}")
        key_type = KEY_TYPE
    if args.path:
        model_dim = model_key_dim(args.path, key_type)
        if model_dim != source.dim:
            raise ValueError(f"{source.keys_file} holds keys of dimension {source.dim}, the model "
                             f"{args.path} has {key_type} keys of dimension {model_dim}: the "
                             "datastore was built with another model")
    metrics = [foreign.check_index(index, len(source), source.dim) for index in args.index]
    if len(set(metrics)) < len(metrics):
        parser.error(f"two --index files search the same metric ({', '.join(metrics)}): give one "
                     "per metric")
    logger.info(f"{fmt} datastore {args.dstore_filename}: {len(source):,} keys of dimension "
                f"{source.dim} ({source.keys.dtype.name}), values {source.values.dtype.name}")
    path = foreign.import_datastore(source, args.out, meta, key_type, args.keys,
                                    progress=not args.no_progress_bar)
    for index, metric in zip(args.index, metrics):
        foreign.place_index(index, path)
        logger.info(f"their index {index} placed in {path}: evaluate with --knn-sim {metric}")
    if not args.index:
        logger.info(f"no --index: build one with `trime-build-index {path} --metric ip` (or l2)")
    print(path)


if __name__ == "__main__":
    main()
