# Sourced by scripts/quickstart.sh and scripts/wikitext2/run.sh: score checkpoints with
# fairseq-eval-lm and print the vanilla / vanilla + local memory / TrimeLM perplexity table.
# Needs: DATA_BIN, USER_DIR, SEG_LEN, EVAL_FLAGS (extra fairseq-eval-lm flags, e.g. --cpu --batch-size 4).

eval_loss() {  # CHECKPOINT SPLIT MEMORY TAU -> base-2 loss per token
  local out loss
  out=$(fairseq-eval-lm "$DATA_BIN" --user-dir "$USER_DIR" --task trime_lm --path "$1" --gen-subset "$2" \
        --tokens-per-sample "$SEG_LEN" $EVAL_FLAGS --eval-memory "$3" --memory-temp "$4" 2>&1) || {
    echo "fairseq-eval-lm failed on $1 ($2):" >&2; echo "$out" | tail -20 >&2; return 1; }
  loss=$(echo "$out" | sed -n 's/.*Loss (base 2): \([0-9.]*\),.*/\1/p')
  [ -n "$loss" ] || { echo "no 'Loss (base 2)' line from fairseq-eval-lm on $1 ($2)" >&2; return 1; }
  echo "$loss"
}

best_tau() {  # CHECKPOINT TAU... -> the τ with the lowest loss on valid
  local ckpt=$1 best="" best_loss="" loss tau; shift
  for tau in "$@"; do
    loss=$(eval_loss "$ckpt" valid local "$tau")
    if [ -z "$best" ] || python3 -c "import sys; sys.exit(not $loss < $best_loss)"; then
      best=$tau; best_loss=$loss
    fi
  done
  echo "$best"
}

comparison_table() {  # VANILLA_CKPT TRIME_CKPT TAU... -> the table on stdout
  local vanilla=$1 trime=$2 vanilla_tau trime_tau name ckpt memory tau dev tst; shift 2
  vanilla_tau=$(best_tau "$vanilla" "$@")
  trime_tau=$(best_tau "$trime" "$@")
  printf "%-46s %10s %10s\n" "model" "dev ppl" "test ppl"
  for row in "vanilla|$vanilla|none|1" \
             "vanilla + local memory at eval (tau=$vanilla_tau)|$vanilla|local|$vanilla_tau" \
             "TrimeLM (local memory, tau=$trime_tau)|$trime|local|$trime_tau"; do
    IFS="|" read -r name ckpt memory tau <<< "$row"
    dev=$(eval_loss "$ckpt" valid "$memory" "$tau")
    tst=$(eval_loss "$ckpt" test "$memory" "$tau")
    printf "%-46s %10.2f %10.2f\n" "$name" "$(python3 -c "print(2**$dev)")" "$(python3 -c "print(2**$tst)")"
  done
}
