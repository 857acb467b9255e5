# WikiText-103, 247M model, L = 3072 (Table 9, column "247M"; Table 2)
MODEL_ARGS="--arch transformer_lm_wiki103"  # 16 layers, d 1024, FFN 4096, adaptive input/softmax
TRAIN_ARGS="--tokens-per-sample 3072 --batch-size 8 --update-freq 3 --optimizer nag --lr 1.0
  --lr-scheduler cosine --warmup-updates 16000 --clip-norm 0.1 --max-update 286000
  --ce-warmup-updates 14300"  # 24 segments x 3072 = 73,728 tokens per update; batch 8 x 3 is not in Table 9
LONG_ARGS="--batching consecutive --consecutive-segments 4 --memory long"  # TrimeLM_long (§4.2), added to TRAIN_ARGS
EVAL_ARGS="--tokens-per-sample 3072 --context-window 2560 --batch-size 1"
LONG_EVAL_ARGS="--eval-memory local,long --long-memory-size 12288"  # TrimeLM_long at eval; external: K = 1024 (issue 4)
