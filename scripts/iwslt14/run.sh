#!/usr/bin/env bash
# Paper Table 6 end to end (IWSLT'14 De->En, §5.4, Appendix D): vanilla Transformer, + kNN-MT, and
# TrimeMT_ext, each tuned on valid by BLEU and scored on test with beam 4. Usage:
#   trime-prepare-iwslt14 iwslt14                   # download + Moses + BPE 10k + binaries
#   bash scripts/iwslt14/run.sh iwslt14/bin [WORK]  # WORK defaults to runs/iwslt14
# Every step is skipped when its output exists (fairseq-train resumes from checkpoint_last.pt), so an
# interrupted run continues where it stopped. Overrides for smaller runs (environment):
#   ARCH (the model), MAX_EPOCH (50), MAX_TOKENS (4096), TRIME_MAX_TOKENS (MAX_TOKENS: TrimeMT_ext's own,
#   e.g. 8192 to match vanilla's target tokens per update with the plain chain), BM25_OPTIONS (of
#   trime-bm25-batches, e.g. "--length-buckets 1" for one chain over all pairs), MODELS ("vanilla trime":
#   the models trained, tuned and tested; the table is written when both are), CE_WARMUP_UPDATES (5500, about 5 epochs on one
#   GPU; the authors' 5 epochs on 4 GPUs), TRAIN_EXTRA, DEVICE ("" = GPU if any; --cpu), KS, LAMBDAS,
#   TEMPS, TAUS, TRIME_LAMBDAS, TRIME_TEMPS (the tuning grids), INDEX ("--index-type flat" for tiny data),
#   CHECKPOINT (checkpoint_best.pt; checkpoint_last.pt with --disable-validation in TRAIN_EXTRA),
#   PAPER ("32.58,33.15,33.73", Table 6's BLEU column; "none" for other data, e.g. Multi30k), KEEP (a
#   results folder: each tuning's best.json / tune.csv, the test decodes' hyp/ and ref.txt, table6.md).
set -euo pipefail
DATA=${1:?usage: bash scripts/iwslt14/run.sh DATA_BIN [WORK]}
WORK=${2:-runs/iwslt14}
ARCH=${ARCH:---arch transformer_iwslt_de_en --share-decoder-input-output-embed --decoder-normalize-before}
MAX_EPOCH=${MAX_EPOCH:-50}
MAX_TOKENS=${MAX_TOKENS:-4096}
TRIME_MAX_TOKENS=${TRIME_MAX_TOKENS:-$MAX_TOKENS}
BM25_OPTIONS=${BM25_OPTIONS:-}
MODELS=${MODELS:-vanilla trime}
CE_WARMUP_UPDATES=${CE_WARMUP_UPDATES:-5500}
TRAIN_EXTRA=${TRAIN_EXTRA:-}
DEVICE=${DEVICE:-}
KS=${KS:-1,2,4,8,16,32,64}            # Appendix D's K grid
LAMBDAS=${LAMBDAS:-0.1,0.2,0.3,0.4,0.5,0.6}
TEMPS=${TEMPS:-10,30,100,300}
TAUS=${TAUS:-5,10,15,20}
TRIME_LAMBDAS=${TRIME_LAMBDAS:-0,0.1,0.2,0.3}
TRIME_TEMPS=${TRIME_TEMPS:-1,3,10}
INDEX=${INDEX:-}
CHECKPOINT=${CHECKPOINT:-checkpoint_best.pt}
export PAPER=${PAPER:-32.58,33.15,33.73}
USER_DIR=$(trime-user-dir)
mkdir -p "$WORK"
echo "== $(date -u +%FT%TZ) trime $(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo '?'), data $DATA, work $WORK"

# the authors' recipe (TRIME-MT README; fairseq's stock IWSLT'14 one for the vanilla model)
COMMON="$DATA --user-dir $USER_DIR --task trime_translation -s de -t en $ARCH
  --optimizer adam --adam-betas (0.9,0.98) --clip-norm 0.0 --lr 5e-4 --lr-scheduler inverse_sqrt
  --warmup-updates 4000 --dropout 0.3 --weight-decay 0.0001 --max-tokens $MAX_TOKENS --max-epoch $MAX_EPOCH
  --eval-bleu --eval-bleu-args {\"beam\":5,\"max_len_a\":1.2,\"max_len_b\":10} --eval-bleu-detok moses
  --eval-bleu-remove-bpe --best-checkpoint-metric bleu --maximize-best-checkpoint-metric
  --no-epoch-checkpoints --log-format simple --log-interval 100 $DEVICE $TRAIN_EXTRA"
# shellcheck disable=SC2086
[ -f "$WORK/bm25_order.json" ] || trime-bm25-batches "$DATA" -s de -t en $BM25_OPTIONS -o "$WORK/bm25_order.json"
wanted() { [[ " $MODELS " == *" $1 "* ]]; }
train() {  # NAME OPTIONS...: skipped once the run reached --max-epoch (train.done), or not in MODELS
  local name=$1; shift
  wanted "$name" || return 0
  [ -f "$WORK/$name/train.done" ] && return
  echo "== training $name"
  # shellcheck disable=SC2086
  fairseq-train $COMMON --save-dir "$WORK/$name" "$@" 2>&1 | tee -a "$WORK/$name.log" | grep -a -E "\| (train|valid) \|" || true
  grep -a -q "done training" "$WORK/$name.log" && touch "$WORK/$name/train.done"
  [ -f "$WORK/$name/train.done" ] || { echo "fairseq-train $name did not finish: see $WORK/$name.log" >&2; exit 1; }
}
train vanilla --criterion label_smoothed_cross_entropy --label-smoothing 0.1
train trime --criterion trime_mt_loss --label-smoothing 0.0 --batching bm25 \
  --bm25-batches "$WORK/bm25_order.json" --memory-temp 10 --memory-topk 8 \
  --ce-warmup-updates "$CE_WARMUP_UPDATES" --max-tokens "$TRIME_MAX_TOKENS"

for model in $MODELS; do  # datastores of the training set, each with its model's keys
  metric=$([ $model = vanilla ] && echo l2 || echo ip)
  [ -d "$WORK/dstore-$model" ] || trime-mt-datastore "$DATA" --path "$WORK/$model/$CHECKPOINT" \
    -s de -t en --subset train --save-dstore "$WORK/dstore-$model" ${DEVICE:+--cpu}
  [ -f "$WORK/dstore-$model/index.$metric.faiss" ] || trime-build-index "$WORK/dstore-$model" --metric $metric $INDEX
done

DECODE="--beam 4 --lenpen 0.6 --max-len-a 1.2 --max-len-b 10 --max-tokens 4096 --post-process subword_nmt --tokenizer moses"
tune() {  # NAME MODEL SCORING SUBSET GRID... -- TASK_OPTIONS
  local name=$1 model=$2 scoring=$3 subset=$4; shift 4
  # shellcheck disable=SC2086
  trime-mt-tune "$DATA" --path "$WORK/$model/$CHECKPOINT" -s de -t en --gen-subset "$subset" \
    --scoring "$scoring" --out-dir "$WORK/$name" ${DEVICE:+--cpu} "$@" 2>&1 | grep -a -E "^no memory" || true
  [ -f "$WORK/$name/best.json" ] || { echo "trime-mt-tune $name did not finish" >&2; exit 1; }
}
best() { python -c "import json,sys; b=json.load(open(sys.argv[1]))['best']; print(b[sys.argv[2]] if b[sys.argv[2]] is not None else '')" "$@"; }
if wanted vanilla; then
  echo "== kNN-MT: tuning on valid, then test with the values chosen"
  tune tune-knnmt vanilla knnlm valid --knn-ks "$KS" --lambdas "$LAMBDAS" --interp-temps "$TEMPS" \
    -- --eval-memory ext --dstore "$WORK/dstore-vanilla" --knn-sim l2 $DECODE
  K=$(best "$WORK/tune-knnmt/best.json" knn_k); L=$(best "$WORK/tune-knnmt/best.json" knn_lambda)
  T=$(best "$WORK/tune-knnmt/best.json" knn_temp)
  tune test-knnmt vanilla knnlm test --knn-ks "${K:-8}" --lambdas "${L:-0}" --interp-temps "${T:-10}" \
    -- --eval-memory ext --dstore "$WORK/dstore-vanilla" --knn-sim l2 $DECODE
fi
if wanted trime; then
  echo "== TrimeMT_ext: tuning on valid, then test with the values chosen"
  tune tune-trime trime trime valid --knn-ks "$KS" --taus "$TAUS" --lambdas "$TRIME_LAMBDAS" \
    --interp-temps "$TRIME_TEMPS" -- --eval-memory ext --dstore "$WORK/dstore-trime" --knn-sim ip $DECODE
  K=$(best "$WORK/tune-trime/best.json" knn_k); TAU=$(best "$WORK/tune-trime/best.json" memory_temp)
  L=$(best "$WORK/tune-trime/best.json" knn_lambda); T=$(best "$WORK/tune-trime/best.json" knn_temp)
  tune test-trime trime trime test --knn-ks "${K:-8}" --taus "${TAU:-10}" --lambdas "${L:-0}" \
    --interp-temps "${T:-1}" -- --eval-memory ext --dstore "$WORK/dstore-trime" --knn-sim ip $DECODE
fi
keep() {  # KEEP: each tuning's results, and each test decode's hypotheses and references
  [ -n "${KEEP:-}" ] || return 0
  for run in tune-knnmt tune-trime test-knnmt test-trime; do
    [ -f "$WORK/$run/best.json" ] || continue
    mkdir -p "$KEEP/$run"
    cp "$WORK/$run/best.json" "$WORK/$run/best.args" "$WORK/$run/tune.csv" "$KEEP/$run/"
    if [ -f "$WORK/$run/tune.png" ]; then cp "$WORK/$run/tune.png" "$KEEP/$run/"; fi
    if [[ $run == test-* ]]; then cp -r "$WORK/$run/hyp" "$WORK/$run/ref.txt" "$KEEP/$run/"; fi
  done
  if [ -f "$WORK/table6.md" ]; then cp "$WORK/table6.md" "$KEEP/"; fi
}
[ -f "$WORK/test-knnmt/best.json" ] && [ -f "$WORK/test-trime/best.json" ] || { keep; exit 0; }  # one model
python - "$WORK" <<'PY'
import json, os, sys
work = sys.argv[1]
load = lambda name: json.load(open(os.path.join(work, name, "best.json")))
knn, trime = load("test-knnmt"), load("test-trime")
row = lambda b: b["best"]["bleu"] if b["best"]["memory"] == "ext" else b["no_memory_bleu"]
paper = os.environ["PAPER"].split(",") if os.environ["PAPER"] != "none" else ["—"] * 3
rows = [("Transformer (vanilla)", knn["no_memory_bleu"], paper[0], "-"),
        ("+ kNN-MT", row(knn), paper[1], " ".join(f"{k} {v}" for k, v in knn["options"].items())),
        ("TrimeMT_ext (+ its datastore)", row(trime), paper[2],
         " ".join(f"{k} {v}" for k, v in trime["options"].items()))]
lines = ["| model | test BLEU | paper (Table 6) | options chosen on valid |", "|---|---|---|---|"]
lines += [f"| {name} | {bleu:.2f} | {paper} | {options or 'no memory was better on valid'} |"
          for name, bleu, paper, options in rows]
lines.append(f"\nsacrebleu: {knn['signature']}; beam 4, lenpen 0.6, {knn['pairs']} test pairs.")
text = "\n".join(lines) + "\n"
open(os.path.join(work, "table6.md"), "w").write(text)
print(text)
PY
keep
