"""IWSLT'14 De-En as fairseq's ``examples/translation/prepare-iwslt14.sh`` builds it (paper §5.4,
Appendix D), from the ``de-en.tgz`` archive, with sacremoses in place of a Moses checkout.

The steps, in the script's order:

1. training text ``de-en/train.tags.de-en.{de,en}``: lines with ``<url>``, ``<talkid>`` or
   ``<keywords>`` dropped, the ``<title>`` / ``<description>`` tags removed (their text kept);
2. Moses tokenisation (``tokenizer.perl``'s defaults: XML escaping on, no punctuation
   normalisation), then ``clean-corpus-n.perl -ratio 1.5 … 1 175`` (a pair goes when a side has
   0 or more than 175 tokens, or one side is more than 1.5 times longer), then lower case;
3. dev/test text: the ``<seg id="…">`` lines of the ``IWSLT14.TED*.xml`` files, tags stripped,
   ’ → ', tokenised and lower-cased the same way;
4. valid = every 23rd training pair, train = the others; test = dev2010, TEDX dev2012, tst2010,
   tst2011 and tst2012, concatenated in that order.

BPE and binarisation follow (``trime.cli.prepare_translation``: joint BPE with 10,000 merges).
"""

import re
import tarfile

LANGS = ("de", "en")
DROPPED_TAGS = ("<url>", "<talkid>", "<keywords>")
REMOVED_TAGS = ("<title>", "</title>", "<description>", "</description>")
TEST_SETS = ("IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010",
             "IWSLT14.TED.tst2011", "IWSLT14.TED.tst2012")
VALID_EVERY = 23
CLEAN_RATIO, CLEAN_MIN, CLEAN_MAX = 1.5, 1, 175


def read_archive(path):
    """{file name: lines} of the text files in ``de-en.tgz`` (its ``de-en/`` folder)."""
    files = {}
    with tarfile.open(path, "r:*") as archive:
        for member in archive.getmembers():
            if member.isfile():
                text = archive.extractfile(member).read().decode("utf-8")
                files[member.name.rsplit("/", 1)[-1]] = text.splitlines()
    missing = [f"train.tags.de-en.{lang}" for lang in LANGS if f"train.tags.de-en.{lang}" not in files]
    missing += [f"{name}.de-en.{lang}.xml" for name in TEST_SETS for lang in LANGS
                if f"{name}.de-en.{lang}.xml" not in files]
    if missing:
        raise ValueError(f"{path} is not IWSLT'14's de-en.tgz: it lacks {', '.join(missing[:4])}"
                         + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""))
    return files


def training_text(lines):
    """Step 1: the talk meta-data lines dropped, the title / description tags removed."""
    kept = []
    for line in lines:
        if any(tag in line for tag in DROPPED_TAGS):
            continue
        for tag in REMOVED_TAGS:
            line = line.replace(tag, "")
        kept.append(line)
    return kept


_SEG_OPEN = re.compile(r'<seg id="[0-9]*">\s*')
_SEG_CLOSE = re.compile(r"\s*</seg>\s*")


def segments(xml_lines):
    """Step 3: the text of each ``<seg id="…">`` line."""
    return [_SEG_CLOSE.sub("", _SEG_OPEN.sub("", line)).replace("\u2019", "'")
            for line in xml_lines if "<seg id" in line]


def moses_tokenize(lines, lang):
    """``tokenizer.perl -l lang`` with its defaults (escaping on; no normalisation)."""
    from sacremoses import MosesTokenizer

    tokenizer = MosesTokenizer(lang=lang)
    return [tokenizer.tokenize(line, escape=True, return_str=True) for line in lines]


def clean_pairs(source, target, ratio=CLEAN_RATIO, low=CLEAN_MIN, high=CLEAN_MAX):
    """Indices of the pairs ``clean-corpus-n.perl -ratio RATIO … LOW HIGH`` keeps."""
    kept = []
    for i, (src, tgt) in enumerate(zip(source, target)):
        n_src, n_tgt = len(src.split()), len(tgt.split())
        if not (low <= n_src <= high and low <= n_tgt <= high):
            continue
        if n_src / n_tgt > ratio or n_tgt / n_src > ratio:
            continue
        kept.append(i)
    return kept


def build_splits(files):
    """{(split, lang): tokenised, lower-cased lines} for train, valid and test (steps 1-4)."""
    tokenised = {lang: moses_tokenize(training_text(files[f"train.tags.de-en.{lang}"]), lang)
                 for lang in LANGS}
    if len(tokenised["de"]) != len(tokenised["en"]):
        raise ValueError(f"train.tags.de-en: {len(tokenised['de']):,} German and "
                         f"{len(tokenised['en']):,} English lines after removing the meta-data: "
                         "the archive is damaged")
    kept = clean_pairs(tokenised["de"], tokenised["en"])
    splits = {}
    for lang in LANGS:
        clean = [" ".join(tokenised[lang][i].split()).lower() for i in kept]
        splits["valid", lang] = [line for n, line in enumerate(clean, 1) if n % VALID_EVERY == 0]
        splits["train", lang] = [line for n, line in enumerate(clean, 1) if n % VALID_EVERY != 0]
        splits["test", lang] = [line.lower() for name in TEST_SETS for line in
                                moses_tokenize(segments(files[f"{name}.de-en.{lang}.xml"]), lang)]
    if len(splits["test", "de"]) != len(splits["test", "en"]):
        raise ValueError(f"test: {len(splits['test', 'de']):,} German and "
                         f"{len(splits['test', 'en']):,} English segments: the archive is damaged")
    return splits
