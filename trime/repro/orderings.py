"""The paper's claims as orderings, checked on the tables in results/ (results/orderings.md).

Each claim compares perplexities of two rows (lower is better); the paper's own numbers are
checked the same way beside ours, so a claim that fails in ours is visible at a glance. A
claim whose table has not been written yet is left out.
"""

import json
import os
from typing import Dict, List, Optional

# (table, claim, better row, worse row, split, factor): holds when better < factor * worse
# (factor 1: strictly lower; 0.9: at least 10% lower), or better > worse for BLEU (a *_bleu split);
# a row of Table 7 is (model, test memory); one of Table 12 is (row, i), the i-th shortest segment
# length L, named in the claim as {L[i]}
CLAIMS = (
    ("table10", "+ continuous cache < Transformer", "+ continuous cache", "Transformer", "test", 1.0),
    ("table10", "TrimeLM < + continuous cache", "TrimeLM", "+ continuous cache", "test", 1.0),
    ("table10", "kNN-LM < Transformer", "kNN-LM", "Transformer", "test", 1.0),
    ("table10", "kNN-LM + continuous cache < kNN-LM", "kNN-LM + continuous cache", "kNN-LM", "test", 1.0),
    ("table10", "TrimeLM_ext < kNN-LM + continuous cache", "TrimeLM_ext", "kNN-LM + continuous cache",
     "test", 1.0),
    ("table10", "TrimeLM_ext at least 10% below Transformer", "TrimeLM_ext", "Transformer", "test", 0.9),
    ("table7", "TrimeLM_long: local + long < local", ("TrimeLM_long", "local,long"),
     ("TrimeLM_long", "local"), "valid", 1.0),
    ("table7", "TrimeLM_ext: local + long + ext < local + long", ("TrimeLM_ext", "local,long,ext"),
     ("TrimeLM_ext", "local,long"), "valid", 1.0),
    ("table7", "TrimeLM_ext < TrimeLM_long, both with local + long + ext", ("TrimeLM_ext", "local,long,ext"),
     ("TrimeLM_long", "local,long,ext"), "valid", 1.0),
    ("table11", "TrimeLM_ext < w/o BM25 batching", "TrimeLM_ext", "w/o BM25 batching", "valid", 1.0),
    ("table11", "TrimeLM_ext < w/o back-prop to memory", "TrimeLM_ext", "w/o back-prop to memory",
     "valid", 1.0),
    ("table12", "TrimeLM: L = {L[2]} < L = {L[1]}", ("TrimeLM", 2), ("TrimeLM", 1), "valid", 1.0),
    ("table12", "TrimeLM: L = {L[1]} < L = {L[0]}", ("TrimeLM", 1), ("TrimeLM", 0), "valid", 1.0),
    ("table12", "+ continuous cache: L = {L[2]} < L = {L[0]}", ("+ continuous cache", 2),
     ("+ continuous cache", 0), "valid", 1.0),
    ("table12", "TrimeLM < + continuous cache, L = {L[2]}", ("TrimeLM", 2), ("+ continuous cache", 2),
     "valid", 1.0),
    ("table12", "TrimeLM < + continuous cache, L = {L[0]}", ("TrimeLM", 0), ("+ continuous cache", 0),
     "valid", 1.0),
    ("table15", "p = 0.1 < p = 0", "p = 0.1", "p = 0", "valid", 1.0),
    ("table15", "p = 0.5 < p = 0.1", "p = 0.5", "p = 0.1", "valid", 1.0),
    ("table15", "p = 0.9 < p = 0.5", "p = 0.9", "p = 0.5", "valid", 1.0),
    ("table15", "p = 0.9 < p = 1", "p = 0.9", "p = 1", "valid", 1.0),
    # the seed study: the means over seeds (results/table15-seeds)
    ("table15-seeds", "p = 0.1 < p = 0, mean over seeds", "p = 0.1", "p = 0", "valid", 1.0),
    # Table 4 on bytes (bits per byte; the paper's test cache row is above its Transformer)
    ("table4", "+ continuous cache* < Transformer", "+ continuous cache*", "Transformer", "test_bpc", 1.0),
    ("table4", "TrimeLM < + continuous cache*", "TrimeLM", "+ continuous cache*", "test_bpc", 1.0),
    ("table4", "TrimeLM_long < TrimeLM", "TrimeLM_long", "TrimeLM", "test_bpc", 1.0),
    # Table 5 (domain adaptation): memory helps out of domain, an in-domain datastore more
    ("table5", "TrimeLM < Transformer", "TrimeLM", "Transformer", "test", 1.0),
    ("table5", "TrimeLM_long < TrimeLM", "TrimeLM_long", "TrimeLM", "test", 1.0),
    ("table5", "kNN-LM + cache: Books datastore < Wiki datastore", "kNN-LM + continuous cache (Books)",
     "kNN-LM + continuous cache (Wiki)", "test", 1.0),
    ("table5", "TrimeLM_ext: Books datastore < Wiki datastore", "TrimeLM_ext (Books)",
     "TrimeLM_ext (Wiki)", "test", 1.0),
    ("table5", "TrimeLM_ext < kNN-LM + cache, Books datastore", "TrimeLM_ext (Books)",
     "kNN-LM + continuous cache (Books)", "test", 1.0),
    ("table5", "TrimeLM_ext < kNN-LM + cache, Wiki datastore", "TrimeLM_ext (Wiki)",
     "kNN-LM + continuous cache (Wiki)", "test", 1.0),
    # Table 6 in miniature: Multi30k De-En, BLEU (results/multi30k; the paper's is IWSLT'14)
    ("multi30k", "+ kNN-MT > Transformer", "+ kNN-MT", "Transformer", "test_bleu", 1.0),
    ("multi30k", "TrimeMT_ext > + kNN-MT, BM25 in 16 length buckets", "TrimeMT_ext, 16 length buckets",
     "+ kNN-MT", "test_bleu", 1.0),
    ("multi30k", "TrimeMT_ext > + kNN-MT, BM25 one chain", "TrimeMT_ext, one chain", "+ kNN-MT",
     "test_bleu", 1.0),
    ("multi30k", "TrimeMT_ext > + kNN-MT, one chain at 8,192 max tokens", "TrimeMT_ext, one chain, 8192",
     "+ kNN-MT", "test_bleu", 1.0),
)


def _lengths(rows: Dict) -> List[str]:
    """Table 12's segment lengths, shortest first (its cells are keyed by L)."""
    return sorted(next(iter(rows.values())), key=int)


def _cell(rows: Dict, key) -> Dict:
    if isinstance(key, str):
        return rows[key]
    row, column = key
    return rows[row][_lengths(rows)[column] if isinstance(column, int) else column]


def _holds(pair, split: str, factor: float) -> bool:
    """(better, worse): higher BLEU (a *_bleu split), else a perplexity below factor × worse."""
    return pair[0] > pair[1] if split.endswith("_bleu") else pair[0] < factor * pair[1]


def check_claims(tables: Dict[str, Dict]) -> List[Dict]:
    """Every claim whose table is in ``tables`` (table name -> its table.json "rows"): our
    perplexities (BLEU for a *_bleu split), the paper's, and whether the ordering holds in each
    (None where the paper has no such cell: a preset's own segment lengths)."""
    checked = []
    for table, claim, better, worse, split, factor in CLAIMS:
        rows = tables.get(table)
        if rows is None:
            continue
        if table == "table12":
            claim = claim.format(L=_lengths(rows))
        paper_key = "paper_test" if split.startswith("test") else "paper_dev"
        cells = [_cell(rows, key) for key in (better, worse)]
        ours = tuple(cell[split] for cell in cells)
        paper = tuple(cell[paper_key] for cell in cells)
        checked.append({"table": table, "claim": claim, "split": split, "ours": ours, "paper": paper,
                        "holds": _holds(ours, split, factor),
                        "holds_in_paper": None if None in paper else _holds(paper, split, factor)})
    return checked


def _load(out_dir: str, table: str) -> Optional[Dict]:
    path = os.path.join(out_dir, table, "table.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["rows"]


def _variants(out_dir: str) -> List[str]:
    """Folders of out_dir that hold tables of another budget (e.g. ``trime-repro table7 --updates
    1600 --out results/updates-1600``), their claims checked beside the main ones."""
    return sorted(name for name in os.listdir(out_dir)
                  if os.path.isdir(os.path.join(out_dir, name)) and any(
                      os.path.isfile(os.path.join(out_dir, name, c[0], "table.json")) for c in CLAIMS))


def write_orderings(out_dir: str) -> str:
    """results/orderings.md and .json from the tables written so far (also those in a subfolder
    of another budget, named ``SUBFOLDER/TABLE``); returns the markdown."""
    names = sorted({c[0] for c in CLAIMS})
    tables = {t: rows for t in names if (rows := _load(out_dir, t)) is not None}
    checked = check_claims(tables)
    for variant in _variants(out_dir):
        found = {t: rows for t in names if (rows := _load(os.path.join(out_dir, variant), t)) is not None}
        checked += [dict(c, table=f"{variant}/{c['table']}") for c in check_claims(found)]
    with open(os.path.join(out_dir, "orderings.json"), "w") as f:
        json.dump(checked, f, indent=1)
    lines = ["# The paper's orderings, checked", "",
             "Perplexity, lower is better; ours from `trime-repro` (each table's `table.md` says how "
             "it was made), the paper's from its Table 7 (247M models) and Tables 10, 11, 12 and 15 (7M "
             "models), WikiText-103, Table 4 (38M, enwik8; bits per byte, `test_bpc`) and Table 5 "
             "(247M WikiText-103 models on BooksCorpus); BLEU, higher is better, for Multi30k "
             "(`test_bleu`; the paper's from Table 6, IWSLT'14).", "",
             "| table | claim | split | ours | holds | paper | holds in paper |",
             "|---|---|---|---|---|---|---|"]
    for c in checked:
        digits = 3 if c["split"].endswith("_bpc") else 2  # bits per byte differ in the 3rd digit
        paper, in_paper = ("—", "—") if c["holds_in_paper"] is None else (
            f"{c['paper'][0]:g} vs {c['paper'][1]:g}", "yes" if c["holds_in_paper"] else "no")
        lines.append(f"| [{c['table']}]({c['table']}/table.md) | {c['claim']} | {c['split']} | "
                     f"{c['ours'][0]:.{digits}f} vs {c['ours'][1]:.{digits}f} | "
                     f"{'yes' if c['holds'] else '**no**'} | "
                     f"{paper} | {in_paper} |")
    if os.path.exists(os.path.join(out_dir, "analysis.md")):  # written by hand, next to the numbers
        lines += ["", "Where an ordering does not hold, what we checked: [analysis.md](analysis.md)."]
    markdown = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "orderings.md"), "w") as f:
        f.write(markdown)
    return markdown
