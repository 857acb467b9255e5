"""The quickstart corpus is deterministic and has the copy structure the README describes."""

from collections import Counter

from trime.cli.toy_corpus import generate


def test_same_seed_same_corpus_other_seed_other_corpus():
    assert list(generate(20, seed=3)) == list(generate(20, seed=3))
    assert list(generate(20, seed=3)) != list(generate(20, seed=4))


def test_names_recur_within_stories_but_are_rare_overall():
    stories = list(generate(300, seed=1))
    places = Counter(w for story in stories for line in story for w in line.split() if w.endswith("ville"))
    assert len(places) > 300  # a large pool: each place is rare in the corpus
    repeats = [max(Counter(w for line in story for w in line.split() if w.endswith("ville")).values())
               for story in stories]
    assert sum(r >= 3 for r in repeats) / len(stories) > 0.9  # but recurs inside its story
