"""`trime-toy-corpus`: a small generated corpus for the quickstart and the tests.

Why generated: it needs no download, is identical on every machine and Python
version, and has the property that makes local memory matter — each short
"story" is about a few characters and places drawn from a large pool of
made-up names (thousands of types, each rare in the corpus), and those names
recur inside the story. Predicting "… went to ___" is hopeless from word
statistics alone (one of ~1,000 places), but easy by copying from the
preceding tokens: exactly what the memory term of Eq. 5 offers, and what a
small Transformer trained for a few hundred updates has not yet learnt to do
with attention alone.
"""

import argparse
import os
import random

from trime.cli.parsing import HelpFormatter
from trime.errors import console_script

CONSONANTS = "b d f g k l m n p r s t v z".split()
VOWELS = "a e i o u".split()

# {A}, {B}, {C}: characters; {P}, {Q}: places; {T}: a thing
TEMPLATES = [
    "{A} went to {P} with {B} .",
    "at {P} , {A} met {C} .",
    "{B} told {A} about {Q} .",
    "then {C} walked from {P} to {Q} .",
    "{A} gave the {T} to {B} .",
    "{B} kept the {T} at {Q} .",
    "later {C} and {A} returned to {P} .",
    "everyone in {Q} knew {B} .",
    "{A} said that {C} had lost the {T} .",
    "the {T} was found at {P} by {C} .",
    "{B} asked {C} to stay in {Q} .",
    "in the morning {A} left {P} .",
]
THINGS = ("lamp book key letter coin map ring cup box coat hat knife rope bell "
          "drum flute basket stone shell feather").split()


def _names(rng, count, syllables):
    names = set()
    while len(names) < count:
        names.add("".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(syllables)))
    return sorted(names)


def generate(num_stories, seed=1, sentences_per_story=(10, 20)):
    """Yield stories (lists of lines); deterministic for a given seed."""
    rng = random.Random(seed)
    people = _names(random.Random(0), 3000, 3)
    places = [name.capitalize() + "ville" for name in _names(random.Random(1), 1500, 2)]
    for _ in range(num_stories):
        cast = dict(A=rng.choice(people), B=rng.choice(people), C=rng.choice(people),
                    P=rng.choice(places), Q=rng.choice(places), T=rng.choice(THINGS))
        count = rng.randint(*sentences_per_story)
        yield [rng.choice(TEMPLATES).format(**cast) for _ in range(count)]


def write_splits(out_dir, train_stories=3000, valid_stories=150, test_stories=150, seed=1):
    """Write train/valid/test.txt (one sentence per line, blank line between stories)."""
    os.makedirs(out_dir, exist_ok=True)
    sizes = dict(train=train_stories, valid=valid_stories, test=test_stories)
    for offset, (split, count) in enumerate(sizes.items()):
        with open(os.path.join(out_dir, f"{split}.txt"), "w") as f:
            for story in generate(count, seed=seed * 100 + offset):
                f.write("\n".join(story) + "\n\n")
    return {split: os.path.join(out_dir, f"{split}.txt") for split in sizes}


@console_script
def main(argv=None):
    parser = argparse.ArgumentParser(prog="trime-toy-corpus", description=__doc__.split("\n\n")[0],
                                     epilog="Writes OUT_DIR/{train,valid,test}.txt: one sentence per "
                                            "line, an empty line after each story (use "
                                            "--doc-boundary empty-line with --task trime_lm).",
                                     formatter_class=HelpFormatter)
    parser.add_argument("out_dir", help="folder for train.txt, valid.txt, test.txt (created)")
    parser.add_argument("--train-stories", type=int, default=3000,
                        help="stories in train.txt (10-20 sentences each, about 150 words)")
    parser.add_argument("--valid-stories", type=int, default=150, help="stories in valid.txt")
    parser.add_argument("--test-stories", type=int, default=150, help="stories in test.txt")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the stories (the pools of names are the same for every seed)")
    args = parser.parse_args(argv)
    paths = write_splits(args.out_dir, args.train_stories, args.valid_stories,
                         args.test_stories, args.seed)
    for split, path in paths.items():
        with open(path) as f:
            print(f"{split}: {sum(len(line.split()) for line in f)} words -> {path}")


if __name__ == "__main__":
    main()
