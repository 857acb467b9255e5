# WikiText-103, 150M model, L = 150 (Table 9, column "150M"; Table 3)
MODEL_ARGS="--arch transformer_lm --decoder-layers 16 --decoder-embed-dim 410 --decoder-ffn-embed-dim 2100
  --decoder-input-dim 410 --decoder-output-dim 410 --decoder-attention-heads 10
  --adaptive-input --adaptive-softmax-cutoff 20000,60000 --adaptive-input-cutoff 20000,60000
  --tie-adaptive-weights"  # heads and cutoffs are not in Table 9
TRAIN_ARGS="--tokens-per-sample 150 --batch-size 60 --update-freq 4 --optimizer adam --lr 5e-4
  --lr-scheduler inverse_sqrt --warmup-updates 8000 --clip-norm 0.0 --max-update 200000
  --ce-warmup-updates 10000"  # 240 segments x 150 = 36,000 tokens per update
LONG_ARGS="--batching consecutive --consecutive-segments 60 --memory long"  # TrimeLM_long (§4.2), added to TRAIN_ARGS
EVAL_ARGS="--tokens-per-sample 150 --context-window 86 --batch-size 1"  # 64 new tokens per segment
LONG_EVAL_ARGS="--eval-memory local,long --long-memory-size 15000"  # TrimeLM_long at eval
