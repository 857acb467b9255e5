#!/usr/bin/env bash
# One prepared check of every CUDA path (about 8 minutes on one H100/H200; no download):
# fused memory kernel vs chunked (local/long/ext, fp32/fp16/bf16), training steps and
# fairseq-train --fp16/--bf16 with each memory rule, fairseq-eval-lm with every eval memory on the
# GPU vs CPU, datastore + index + ext eval with each --knn-device, and the speed/memory targets
# (loss overhead at d = 1,024, N = 24,576 and M = 196,608; ext eval over 10M keys).
# Prints one line per check (PASS / FAIL / SKIP) and a summary; exits 1 when a check failed.
#   pip install -e ".[gpu,test]" && bash scripts/gpu_check.sh [--only kernel,step,...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec python scripts/gpu/check.py "$@"
