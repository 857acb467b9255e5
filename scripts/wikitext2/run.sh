#!/usr/bin/env bash
# First real-data check: vanilla LM vs TrimeLM on WikiText-2, same model size, same updates.
#
#   bash scripts/wikitext2/run.sh WIKITEXT2_DIR [WORK_DIR]
#
# WIKITEXT2_DIR holds train.txt/valid.txt/test.txt (or wiki.{train,valid,test}.tokens), e.g. the
# unpacked wikitext-2 archive. Environment knobs (defaults = the CPU budget in results/wikitext2.md):
#   UPDATES=1200 SEG_LEN=512 BATCH=8 LAYERS=8 DIM=128 FFN=512 HEADS=4 DEVICE=cpu
# The architecture is the paper's 7M config (Table 9: 8 layers, d = 128, FFN 512, 4 heads,
# adaptive input + adaptive softmax); on CPU we shorten the segment (L = 512 instead of 3072)
# and the number of updates. Output: WORK_DIR/results.txt (dev/test perplexity table).
set -euo pipefail

DATA=${1:?usage: bash scripts/wikitext2/run.sh WIKITEXT2_DIR [WORK_DIR]}
WORK=${2:-runs/wikitext2}
UPDATES=${UPDATES:-1200}
SEG_LEN=${SEG_LEN:-512}
BATCH=${BATCH:-8}
LAYERS=${LAYERS:-8}; DIM=${DIM:-128}; FFN=${FFN:-512}; HEADS=${HEADS:-4}
DEVICE=${DEVICE:-cpu}
USER_DIR=$(trime-user-dir)
CPU_FLAG=""; [ "$DEVICE" = cpu ] && CPU_FLAG="--cpu"

pick() { for f in "$DATA/$1.txt" "$DATA/wiki.$1.tokens"; do [ -f "$f" ] && { echo "$f"; return; }; done
         echo "error: no $1.txt or wiki.$1.tokens in $DATA (pass the WikiText-2 folder as first argument)" >&2; exit 2; }
TRAIN=$(pick train); VALID=$(pick valid); TEST=$(pick test)
mkdir -p "$WORK"

if [ ! -f "$WORK/bin/dict.txt" ]; then
  echo "== fairseq-preprocess -> $WORK/bin"
  fairseq-preprocess --only-source --trainpref "$TRAIN" --validpref "$VALID" --testpref "$TEST" \
    --destdir "$WORK/bin" --workers 2 > "$WORK/preprocess.log" 2>&1
fi

MODEL="--arch transformer_lm --decoder-layers $LAYERS --decoder-embed-dim $DIM --decoder-ffn-embed-dim $FFN
  --decoder-attention-heads $HEADS --decoder-input-dim $DIM --decoder-output-dim $DIM --decoder-normalize-before
  --adaptive-input --adaptive-input-cutoff 2000,10000 --adaptive-softmax-cutoff 2000,10000
  --tie-adaptive-weights --adaptive-softmax-dropout 0.1 --dropout 0.1"
OPTIM="--tokens-per-sample $SEG_LEN --batch-size $BATCH --max-update $UPDATES --optimizer adam
  --adam-betas (0.9,0.98) --lr 2e-3 --lr-scheduler inverse_sqrt --warmup-updates $((UPDATES / 10))
  --clip-norm 0.1 --seed 1 --num-workers 0 --no-epoch-checkpoints --log-format simple --log-interval 50
  --validate-interval-updates $((UPDATES / 3)) $CPU_FLAG"

train() {  # NAME TASK-AND-CRITERION-ARGS...
  local name=$1; shift
  if [ -f "$WORK/$name/checkpoint_last.pt" ]; then echo "== $name: checkpoint exists, skipping training"; return; fi
  echo "== train $name ($UPDATES updates of $BATCH x $SEG_LEN tokens)  log: $WORK/$name.log"
  local start=$SECONDS
  fairseq-train "$WORK/bin" --user-dir "$USER_DIR" "$@" $MODEL $OPTIM \
    --save-dir "$WORK/$name" > "$WORK/$name.log" 2>&1
  echo "   $name trained in $((SECONDS - start)) s"
}
# vanilla = the plain LM loss (Eq. 1) on every word, no memory (README: "vanilla"); with an adaptive
# softmax fairseq's cross_entropy fails in backward and its adaptive_loss leaves words out
train vanilla --task trime_lm --criterion trime_loss --memory none
train trime --task trime_lm --criterion trime_loss --ce-warmup-updates $((UPDATES / 20))

echo "== fairseq-eval-lm (tau for the memory rows tuned on dev from 0.5, 1, 2, 4, 8)"
source "$(dirname "$0")/../lib/compare.sh"
DATA_BIN="$WORK/bin"; EVAL_FLAGS="--batch-size 4 $CPU_FLAG"
table=$(comparison_table "$WORK/vanilla/checkpoint_last.pt" "$WORK/trime/checkpoint_last.pt" 0.5 1 2 4 8)
{
  echo "WikiText-2, $LAYERS layers d=$DIM FFN=$FFN heads=$HEADS, adaptive in/out, L=$SEG_LEN, $UPDATES updates x $BATCH segments, device=$DEVICE"
  echo "$table"
} | tee "$WORK/results.txt"
