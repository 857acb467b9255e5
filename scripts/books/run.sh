#!/usr/bin/env bash
# Domain adaptation (paper §5.3, Table 5, in miniature): a WikiText-2 model evaluated on held-out
# Gutenberg books, without memory, with local memory, and with a datastore built from the other
# books (binarised with the model's own dictionary). Usage:
#   TUNED="--memory-temp T --knn-lambda L --knn-temp T2" bash scripts/books/run.sh GUTENBERG_DIR [WIKITEXT2_RUN_DIR]
# GUTENBERG_DIR holds the NLTK Gutenberg selection (*.txt); WIKITEXT2_RUN_DIR holds bin/ and
# trime/checkpoint_best.pt (scripts/wikitext2/run.sh). TUNED: the ext-memory values, tuned on a dev set
# with trime-tune (best.json's "options"); without it the defaults of fairseq-eval-lm are used.
set -euo pipefail
SRC=${1:?usage: bash scripts/books/run.sh GUTENBERG_DIR [WIKITEXT2_RUN_DIR]}
WT2=${2:-runs/wikitext2}
OUT=${OUT:-runs/books}
CKPT=$WT2/trime/checkpoint_best.pt
python scripts/books/prepare.py "$SRC" "$OUT/raw"
rm -rf "$OUT/bin"
fairseq-preprocess --only-source --srcdict "$WT2/bin/dict.txt" --trainpref "$OUT/raw/train.txt" \
  --testpref "$OUT/raw/test.txt" --destdir "$OUT/bin" --workers 2 > /dev/null 2>&1
grep -a "replaced" "$OUT/bin/preprocess.log" || true
EVAL="fairseq-eval-lm $OUT/bin --user-dir $(trime-user-dir) --task trime_lm --path $CKPT
  --tokens-per-sample 512 --batch-size 8 --doc-boundary empty-line --cpu"
[ -d "$OUT/dstore" ] || $EVAL --gen-subset train --save-dstore "$OUT/dstore" 2>&1 | grep -a -E "Evaluated|saved"
[ -f "$OUT/dstore/index.ip.faiss" ] || trime-build-index "$OUT/dstore" --train-size 262144 2>&1 | grep -a written
TUNED=${TUNED:-}  # e.g. values tuned on WikiText-2 dev (there is no books dev split)
for memory in none local "local,long --long-memory-size 12288" "local,long,ext --long-memory-size 12288 --dstore $OUT/dstore $TUNED"; do
  echo "== books test, --eval-memory $memory"
  $EVAL --gen-subset test --eval-memory $memory 2>&1 | grep -a "Loss (base 2)"
done
