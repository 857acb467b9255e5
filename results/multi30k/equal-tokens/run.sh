# Control run: TrimeMT_ext as in scripts/multi30k/run.sh but --max-tokens 8192, so that BM25 batches
# carry about as many target tokens per update as vanilla's size-sorted 4096-token batches.
# Run from the checkout root with the venv active; .m30k/prep = PREP and .m30k/work = WORK of ../README.md.
set -euo pipefail
DATA=.m30k/prep/bin W=.m30k/work-8k
ARCH="--arch transformer --encoder-layers 3 --decoder-layers 3 --encoder-embed-dim 256
  --decoder-embed-dim 256 --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512
  --encoder-attention-heads 4 --decoder-attention-heads 4 --share-decoder-input-output-embed
  --decoder-normalize-before"
echo "== $(date -u +%FT%TZ) trime $(git rev-parse --short HEAD)"
if [ ! -f $W/trime/train.done ]; then
fairseq-train $DATA --user-dir $(trime-user-dir) --task trime_translation -s de -t en $ARCH \
  --optimizer adam --adam-betas '(0.9,0.98)' --clip-norm 0.0 --lr 5e-4 --lr-scheduler inverse_sqrt \
  --warmup-updates 4000 --dropout 0.3 --weight-decay 0.0001 --max-tokens 8192 --max-epoch 100 \
  --eval-bleu --eval-bleu-args '{"beam":5,"max_len_a":1.2,"max_len_b":10}' --eval-bleu-detok moses \
  --eval-bleu-remove-bpe --best-checkpoint-metric bleu --maximize-best-checkpoint-metric \
  --no-epoch-checkpoints --log-format simple --log-interval 100 --cpu \
  --max-update 1500 --disable-validation --warmup-updates 300 --lr 1e-3 \
  --save-interval-updates 100 --keep-interval-updates 1 --num-workers 0 --seed 1 \
  --save-dir $W/trime --criterion trime_mt_loss --label-smoothing 0.0 --batching bm25 \
  --bm25-batches .m30k/work/bm25_order.json --memory-temp 10 --memory-topk 8 --ce-warmup-updates 200 \
  2>&1 | tee -a $W/trime.log | grep -a -E "\| (train|valid) \|" || true
grep -a -q "done training" $W/trime.log && touch $W/trime/train.done
fi
[ -d $W/dstore-trime ] || trime-mt-datastore $DATA --path $W/trime/checkpoint_last.pt -s de -t en --subset train --save-dstore $W/dstore-trime --cpu
[ -f $W/dstore-trime/index.ip.faiss ] || trime-build-index $W/dstore-trime --metric ip
DECODE="--beam 4 --lenpen 0.6 --max-len-a 1.2 --max-len-b 10 --max-tokens 4096 --post-process subword_nmt --tokenizer moses"
for subset in valid test; do
  trime-mt-tune $DATA --path $W/trime/checkpoint_last.pt -s de -t en --gen-subset $subset --scoring trime \
    --out-dir $W/$subset-trime --cpu --knn-ks 4 --taus 10 --lambdas 0.4 --interp-temps 3 \
    -- --eval-memory ext --dstore $W/dstore-trime --knn-sim ip $DECODE 2>&1 | grep -a -E "^no memory" || true
done
echo "== $(date -u +%FT%TZ) done"
