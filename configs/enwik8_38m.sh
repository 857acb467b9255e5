# enwik8, 38M model, L = 512 (Table 9, column "38M"; Table 4). Character level, plain softmax.
MODEL_ARGS="--arch transformer_lm --decoder-layers 12 --decoder-embed-dim 512 --decoder-ffn-embed-dim 2048
  --decoder-input-dim 512 --decoder-output-dim 512 --decoder-attention-heads 8"  # heads not in Table 9
TRAIN_ARGS="--tokens-per-sample 512 --batch-size 24 --update-freq 4 --optimizer adam --lr 2.5e-4
  --lr-scheduler cosine --warmup-updates 0 --clip-norm 0.0 --max-update 400000
  --ce-warmup-updates 20000"  # 96 segments x 512 = 49,152 tokens per update
LONG_ARGS="--batching consecutive --consecutive-segments 24 --memory long"  # TrimeLM_long (§4.2), added to TRAIN_ARGS
EVAL_ARGS="--tokens-per-sample 512 --context-window 432 --batch-size 1"  # 80 new tokens per segment
LONG_EVAL_ARGS="--eval-memory local,long --long-memory-size 24576"  # TrimeLM_long at eval
