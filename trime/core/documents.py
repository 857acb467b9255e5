"""Documents in a binarised split (``--doc-boundary``): long memory never crosses one.

Documents are found in the token stream that ``fairseq-preprocess`` wrote (one line =
its tokens + </s>):

- ``title``: a document starts at each WikiText article title line `` = Title = ``
  between empty lines (sections `` = = Sub = = `` and table legends do not start
  one); lines before the first title form a document of their own.
- ``empty-line``: an empty line ends a document (one document per paragraph block).
- ``none``: the whole split is one document (the authors' concatenated stream).
"""

from typing import Optional

import numpy as np

DOC_BOUNDARIES = ("title", "empty-line", "none")


def title_lines(line_tokens: np.ndarray, line_sizes: np.ndarray, equals_id: int) -> np.ndarray:
    """Which lines are WikiText article titles: `` = Title = `` (not `` = = Section = = ``)
    with an empty line (or the split's edge) on both sides.

    The empty neighbours matter: WikiText also has table-legend lines such as
    `` = Goals ; A = `` inside articles (with the rule, WikiText-2 has exactly its
    600 / 60 / 60 articles; without it, 629 / 60 / 62).
    """
    sizes = np.asarray(line_sizes, dtype=np.int64)
    line_starts = np.r_[0, np.cumsum(sizes)[:-1]] if len(sizes) else np.zeros(0, np.int64)
    tokens = np.asarray(line_tokens)
    words = sizes - 1  # without </s>
    title = words >= 3
    idx = np.flatnonzero(title)
    first, last = line_starts[idx], line_starts[idx] + words[idx] - 1
    title[idx] = ((tokens[first] == equals_id) & (tokens[last] == equals_id)
                  & (tokens[first + 1] != equals_id) & (tokens[last - 1] != equals_id))
    empty = sizes <= 1  # only </s>
    return title & np.r_[True, empty[:-1]] & np.r_[empty[1:], True]


def document_starts(line_tokens: np.ndarray, line_sizes: np.ndarray, boundary: str,
                    equals_id: Optional[int] = None) -> np.ndarray:
    """Stream offsets at which documents start (sorted, always begins with 0).

    Args:
        line_tokens: every line's token ids concatenated, each line ending in </s>.
        line_sizes: tokens per line (</s> included).
        boundary: one of DOC_BOUNDARIES.
        equals_id: dictionary index of ``=`` (needed for ``title``).
    """
    sizes = np.asarray(line_sizes, dtype=np.int64)
    line_starts = np.r_[0, np.cumsum(sizes)[:-1]] if len(sizes) else np.zeros(0, np.int64)
    if boundary == "none" or len(sizes) == 0:
        return np.zeros(1, dtype=np.int64)
    empty = sizes <= 1  # only </s>
    if boundary == "empty-line":
        after_empty = np.r_[False, empty[:-1]] & ~empty
        return np.unique(np.r_[0, line_starts[after_empty]]).astype(np.int64)
    if boundary != "title":
        raise ValueError(f"unknown document boundary {boundary!r}; choose one of "
                         f"{', '.join(DOC_BOUNDARIES)}")
    if equals_id is None:
        return np.zeros(1, dtype=np.int64)
    title = title_lines(line_tokens, sizes, equals_id)
    return np.unique(np.r_[0, line_starts[title]]).astype(np.int64)


def token_document_ids(offsets: np.ndarray, doc_starts: np.ndarray) -> np.ndarray:
    """Document id (index into doc_starts) of tokens at the given stream offsets."""
    return np.searchsorted(doc_starts, offsets, side="right") - 1
