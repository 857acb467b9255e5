#!/usr/bin/env bash
# Multi30k De->En (flickr test 2016): vanilla, + kNN-MT and TrimeMT_ext with a small Transformer and the
# same update budget on CPU, through the Table 6 script (scripts/iwslt14/run.sh). Usage:
#   trime-prepare-translation MULTI30K/raw PREP -s de -t en --train train --valid val \
#       --test test_2016_flickr --bpe-merges 10000 --lowercase
#   bash scripts/multi30k/run.sh PREP/bin [WORK]     # WORK defaults to runs/multi30k
# Resumable like the script it calls: rerun the same command after an interruption.
set -euo pipefail
DATA=${1:?usage: bash scripts/multi30k/run.sh PREP/bin [WORK]}
WORK=${2:-runs/multi30k}
export ARCH="--arch transformer --encoder-layers 3 --decoder-layers 3 --encoder-embed-dim 256
  --decoder-embed-dim 256 --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512
  --encoder-attention-heads 4 --decoder-attention-heads 4 --share-decoder-input-output-embed
  --decoder-normalize-before"
export MAX_EPOCH=100 CE_WARMUP_UPDATES=200 DEVICE=${DEVICE---cpu} CHECKPOINT=checkpoint_last.pt PAPER=none
export TRAIN_EXTRA="--max-update ${MAX_UPDATE:-1500} --disable-validation --warmup-updates 300 --lr 1e-3
  --save-interval-updates 100 --keep-interval-updates 1 --num-workers 0 --seed 1"
# tuning grids sized to finish in one 3-hour session on 2 CPU cores (valid decodes take 20-350 s each,
# fastest once the search cache is warm); override any of them
export KS=${KS:-4,8} LAMBDAS=${LAMBDAS:-0.3,0.4,0.5} TEMPS=${TEMPS:-10,30} TAUS=${TAUS:-5,10}
export TRIME_LAMBDAS=${TRIME_LAMBDAS:-0,0.2,0.4} TRIME_TEMPS=${TRIME_TEMPS:-3}
exec bash "$(dirname "$0")/../iwslt14/run.sh" "$DATA" "$WORK"
