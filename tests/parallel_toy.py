"""A toy parallel corpus, binarised, and a tiny translation model trained on it (e2e tests)."""

import random

from console import run

TINY_ARCH = [
    "--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "16", "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32",
    "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2",
    "--decoder-attention-heads", "2", "--decoder-normalize-before",
]


def write_pairs(folder, name, lines, seed):
    """de: random words; en: the same words upper-cased, in reverse order."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(40)]
    with open(folder / f"{name}.de", "w") as de, open(folder / f"{name}.en", "w") as en:
        for _ in range(lines):
            sentence = rng.sample(words, rng.randint(3, 8))
            de.write(" ".join(sentence) + "\n")
            en.write(" ".join(w.upper() for w in reversed(sentence)) + "\n")
    return str(folder / name)


def binarised(folder, train_lines=64, valid_lines=16):
    train, valid = write_pairs(folder, "train", train_lines, 0), write_pairs(folder, "valid", valid_lines, 1)
    run("fairseq-preprocess", "--source-lang", "de", "--target-lang", "en", "--trainpref", train,
        "--validpref", valid, "--destdir", folder / "bin", "--workers", "1")
    return folder / "bin"


def train(data, save_dir, extra=(), updates=6):
    """(exit code, output) of a tiny fairseq-train on ``data``."""
    import trime

    return run("fairseq-train", data, "--user-dir", trime.USER_DIR, "--task", "trime_translation",
               *TINY_ARCH, "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "256",
               "--max-update", str(updates), "--save-dir", save_dir, "--no-epoch-checkpoints",
               "--log-format", "simple", "--log-interval", "1", "--cpu", "--num-workers", "0",
               *extra)


def trained_with_datastore(root, updates=30):
    """(data, checkpoint, datastore) of a toy model trained with label-smoothed CE, its train
    datastore indexed flat for l2 and ip."""
    data = binarised(root)
    train(data, root / "model", ["--criterion", "label_smoothed_cross_entropy"], updates=updates)
    checkpoint = root / "model" / "checkpoint_last.pt"
    dstore = root / "dstore"
    run("trime-mt-datastore", data, "--path", checkpoint, "-s", "de", "-t", "en",
        "--save-dstore", dstore, "--cpu")
    for metric in ("l2", "ip"):
        run("trime-build-index", dstore, "--metric", metric, "--index-type", "flat")
    return data, checkpoint, dstore


TRAIN_DE = [f"Das ist Satz Nummer {i} ." for i in range(60)]
TRAIN_EN = [f"That's sentence number {i} ." for i in range(60)]


def mock_iwslt_archive(path, drop=None, lines=60):
    """A de-en.tgz laid out like IWSLT'14's: meta-data lines, ``lines`` training pairs, a pair
    that clean-corpus-n drops for its length ratio and one for an empty side, the five test sets."""
    import io
    import tarfile

    from trime.mt.iwslt14 import TEST_SETS

    de = ["<url>http://www.ted.com/talks/x.html</url>", "<keywords>talks</keywords>",
          "<talkid>1</talkid>", "<title>Der Titel</title>", "<description>Eine Rede</description>",
          *TRAIN_DE[:lines], "ein zwei drei vier fünf sechs sieben acht", "Leer ?"]
    en = ["<url>http://www.ted.com/talks/x.html</url>", "<keywords>talks</keywords>",
          "<talkid>1</talkid>", "<title>The title</title>", "<description>A talk</description>",
          *TRAIN_EN[:lines], "one two", "   "]  # too long a ratio; an empty side
    files = {"de-en/train.tags.de-en.de": de, "de-en/train.tags.de-en.en": en}
    for n, name in enumerate(TEST_SETS):
        for lang, word in (("de", "Hallo"), ("en", "Hello")):
            files[f"de-en/{name}.de-en.{lang}.xml"] = [
                '<refset setid="x">', f'<seg id="1"> {word} {n} it\u2019s </seg>',
                f'<seg id="2">{word} again {n}</seg>', "</refset>"]
    with tarfile.open(path, "w:gz") as archive:
        for name, lines in files.items():
            if name == drop:
                continue
            data = "".join(line + "\n" for line in lines).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path
