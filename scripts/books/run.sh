#!/usr/bin/env bash
# Domain adaptation (paper §5.3, Table 5, in miniature): a WikiText-2 model evaluated on held-out
# Gutenberg books, without memory, with local memory, and with a datastore built from the other
# books (binarised with the model's own dictionary). Usage:
#   bash scripts/books/run.sh [GUTENBERG_DIR] [WIKITEXT2_RUN_DIR]
# WIKITEXT2_RUN_DIR holds bin/ and trime/checkpoint_best.pt (scripts/wikitext2/run.sh).
set -euo pipefail
SRC=${1:-../shared/data/gutenberg-nltk}
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
# τ, λ, τ' for ext: tuned on WikiText-2 dev with the WikiText-2 datastore (no books dev split here)
TUNED=${TUNED:-"--memory-temp 8 --knn-lambda 0.4 --knn-temp 0.5"}
for memory in none local "local,long --long-memory-size 12288" "local,long,ext --long-memory-size 12288 --dstore $OUT/dstore $TUNED"; do
  echo "== books test, --eval-memory $memory"
  $EVAL --gen-subset test --eval-memory $memory 2>&1 | grep -a "Loss (base 2)"
done
