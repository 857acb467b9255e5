# WikiText-103, 247M model, L = 3072 (Table 9, column "247M"; Table 2)
MODEL_ARGS="--arch transformer_lm_wiki103"  # 16 layers, d 1024, FFN 4096, adaptive input/softmax
TRAIN_ARGS="--tokens-per-sample 3072 --batch-size 8 --update-freq 3 --optimizer nag --lr 1.0
  --lr-scheduler cosine --warmup-updates 16000 --clip-norm 0.1 --max-update 286000
  --ce-warmup-updates 14300"  # 24 segments x 3072 = 73,728 tokens per update; batch 8 x 3 is not in Table 9
LONG_ARGS="--batching consecutive --consecutive-segments 4 --memory long"  # TrimeLM_long (§4.2), added to TRAIN_ARGS
EVAL_ARGS="--tokens-per-sample 3072 --context-window 2560 --batch-size 1"
LONG_EVAL_ARGS="--eval-memory local,long --long-memory-size 12288"  # TrimeLM_long at eval
EXT_ARGS="--memory ext --local-drop-prob 0.9 --batching bm25 --bm25-batches ${BM25_BATCHES:-bm25.json}"  # TrimeLM_ext (Table 2; §4.3, App. H: p = 0.9); file from trime-bm25-batches --k 20
EXT_EVAL_ARGS="--eval-memory local,long,ext --long-memory-size 12288 --dstore ${DSTORE:-dstore} --knn-k 1024 --knn-nprobe 32 --knn-lambda 0.3"  # App. A; τ, τ' tuned on dev (trime-tune); the authors' IVFPQ: trime-build-index --nlist 4096 --pq-m 64 --pq-bits 8
