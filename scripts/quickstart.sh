#!/usr/bin/env bash
# Quickstart on an embedded, generated corpus (no download; a few minutes on 2 CPU cores).
#
#   1. trime-toy-corpus writes short stories whose rare made-up names recur inside a story;
#   2. fairseq-preprocess binarises them;
#   3. fairseq-train trains a vanilla LM (plain fairseq: language_modeling + cross_entropy)
#      and a TrimeLM (trime_lm + trime_loss) of the same size for the same updates;
#   4. fairseq-eval-lm scores valid/test: vanilla, vanilla + local memory at eval only
#      (Eq. 6 on a model not trained for it), TrimeLM (Eq. 6, trained with Eq. 5).
#      τ for the two memory rows is picked on valid from {0.5, 1, 2}.
#
# Usage: bash scripts/quickstart.sh [WORK_DIR]   (env: UPDATES=400 to change the budget)
set -euo pipefail

WORK=${1:-runs/quickstart}
UPDATES=${UPDATES:-400}
USER_DIR=$(trime-user-dir)
mkdir -p "$WORK"

echo "== 1. corpus -> $WORK/raw"
trime-toy-corpus "$WORK/raw"

echo "== 2. fairseq-preprocess -> $WORK/bin"
rm -rf "$WORK/bin"
fairseq-preprocess --only-source --trainpref "$WORK/raw/train.txt" --validpref "$WORK/raw/valid.txt" \
  --testpref "$WORK/raw/test.txt" --destdir "$WORK/bin" --workers 2 > "$WORK/preprocess.log" 2>&1

# --decoder-input-dim / --decoder-output-dim: fairseq's transformer_lm defaults them to 512 whatever
# --decoder-embed-dim is (512-wide embeddings with projections); d = 64 means 64 everywhere
MODEL="--arch transformer_lm --decoder-layers 2 --decoder-embed-dim 64 --decoder-ffn-embed-dim 256
  --decoder-attention-heads 4 --decoder-input-dim 64 --decoder-output-dim 64
  --share-decoder-input-output-embed --dropout 0.1"
TRAIN="--tokens-per-sample 128 --batch-size 16 --max-update $UPDATES --optimizer adam --lr 2e-3
  --lr-scheduler inverse_sqrt --warmup-updates 50 --cpu --num-workers 0 --seed 1
  --no-epoch-checkpoints --log-format simple --log-interval 50 --disable-validation"

echo "== 3a. vanilla LM ($UPDATES updates)  log: $WORK/vanilla.log"
fairseq-train "$WORK/bin" --task language_modeling --criterion cross_entropy $MODEL $TRAIN \
  --save-dir "$WORK/vanilla" > "$WORK/vanilla.log" 2>&1
echo "== 3b. TrimeLM ($UPDATES updates, first 5% plain LM loss)  log: $WORK/trime.log"
fairseq-train "$WORK/bin" --user-dir "$USER_DIR" --task trime_lm --criterion trime_loss \
  --ce-warmup-updates $((UPDATES / 20)) --doc-boundary empty-line $MODEL $TRAIN --save-dir "$WORK/trime" \
  > "$WORK/trime.log" 2>&1

echo "== 4. fairseq-eval-lm (tau for the memory rows picked on valid from 0.5, 1, 2)"
source "$(dirname "$0")/lib/compare.sh"
DATA_BIN="$WORK/bin"; SEG_LEN=128; EVAL_FLAGS="--batch-size 16 --cpu"
table=$(comparison_table "$WORK/vanilla/checkpoint_last.pt" "$WORK/trime/checkpoint_last.pt" 0.5 1 2)
echo "$table" | tee "$WORK/results.txt"
echo "(table saved to $WORK/results.txt)"
