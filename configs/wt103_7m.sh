# WikiText-103, 7M model (Table 9, column "7M"; used for the paper's ablations, Table 10)
MODEL_ARGS="--arch transformer_lm --decoder-layers 8 --decoder-embed-dim 128 --decoder-ffn-embed-dim 512
  --decoder-attention-heads 4 --decoder-input-dim 128 --decoder-output-dim 128
  --adaptive-input --adaptive-softmax-cutoff 20000,60000 --adaptive-input-cutoff 20000,60000
  --tie-adaptive-weights"  # heads 4 and the cutoffs are not in Table 9 (cutoffs: fairseq's wiki103 ones)
TRAIN_ARGS="--tokens-per-sample 3072 --batch-size 8 --update-freq 1 --optimizer adam --lr 5e-4
  --lr-scheduler inverse_sqrt --warmup-updates 8000 --clip-norm 0.0 --max-update 200000
  --ce-warmup-updates 10000"
LONG_ARGS="--batching consecutive --consecutive-segments 8 --memory long"  # TrimeLM_long (§4.2), added to TRAIN_ARGS
EVAL_ARGS="--tokens-per-sample 3072 --context-window 2560 --batch-size 1"  # 512 new tokens per segment
LONG_EVAL_ARGS="--eval-memory local,long --long-memory-size 12288"  # TrimeLM_long at eval
EXT_ARGS="--memory ext --local-drop-prob 0.9 --batching bm25 --bm25-batches ${BM25_BATCHES:-bm25.json}"  # TrimeLM_ext (Tables 11, 13, 15; §4.3, App. H: p = 0.9); file from trime-bm25-batches --k 20
EXT_EVAL_ARGS="--eval-memory local,long,ext --long-memory-size 12288 --dstore ${DSTORE:-dstore} --knn-k 1024 --knn-nprobe 32 --knn-lambda 0.3"  # App. A; τ, τ' tuned on dev (trime-tune); the authors' IVFPQ: trime-build-index --nlist 4096 --pq-m 64 --pq-bits 8
