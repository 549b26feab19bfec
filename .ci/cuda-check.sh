#!/usr/bin/env bash
# CI-only: compile the CUDA path (`--features cuda`) without a GPU.
#
# nvcc and the CUDA headers come from pinned PyPI wheels, unpacked under the
# target directory (so a kept target/ keeps them); the environment they need is
# set for this script only. `cargo check` runs candle-kernels' build, which
# compiles its CUDA kernels to PTX with nvcc (about 11 minutes on 2 cores), and
# type-checks every crate, test and example with the feature on.
#
# Exit status: 0 when the check passed or was skipped (one `SKIPPED:` line says
# why: the wheels could not be installed), non-zero when it failed.
set -euo pipefail
cd "$(dirname "$0")/.."

# The toolkit's versions. cudarc (through candle) knows CUDA up to 13.4, so it
# is told 13.4: the 13.5 headers are a superset. Compute capability 9.0 (H100
# / H200) is the one the GPU test script (tests/gpu/run.sh) runs on.
WHEELS=(
  nvidia-cuda-nvcc==13.5.37
  nvidia-cuda-runtime==13.5.37
  nvidia-cuda-crt==13.5.37
  nvidia-cuda-cccl==13.3.5.0.6
  nvidia-nvvm==13.5.37
)
CUDARC_VERSION=13040
COMPUTE_CAP=90

TARGET_DIR="${CARGO_TARGET_DIR:-target}"
TOOLKIT="$TARGET_DIR/cuda-toolkit"
STAMP="$TOOLKIT/installed-$(printf '%s\n' "${WHEELS[@]}" | sha256sum | cut -c1-16)"

install_toolkit() {
  rm -rf "$TOOLKIT"
  mkdir -p "$TOOLKIT/wheels" "$TOOLKIT/root"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --dest "$TOOLKIT/wheels" "${WHEELS[@]}" || return 1
  local wheel
  for wheel in "$TOOLKIT"/wheels/*.whl; do
    python3 -m zipfile -e "$wheel" "$TOOLKIT/root/" || return 1
  done
  # zip archives do not keep the executable bit.
  chmod +x "$TOOLKIT"/root/nvidia/cu13/bin/* "$TOOLKIT"/root/nvidia/cu13/nvvm/bin/* || return 1
  "$TOOLKIT/root/nvidia/cu13/bin/nvcc" --version >/dev/null || return 1
  touch "$STAMP"
}

if [ ! -e "$STAMP" ] && ! install_toolkit; then
  echo "SKIPPED: CUDA check (--features cuda): the pinned nvcc wheels (${WHEELS[*]}) could not be installed with pip"
  exit 0
fi

CUDA_ROOT="$(cd "$TOOLKIT/root/nvidia/cu13" && pwd)"
echo "nvcc: $("$CUDA_ROOT/bin/nvcc" --version | tail -1)"
PATH="$CUDA_ROOT/bin:$PATH" \
  CUDA_HOME="$CUDA_ROOT" CUDA_PATH="$CUDA_ROOT" \
  CUDARC_CUDA_VERSION="$CUDARC_VERSION" CUDA_COMPUTE_CAP="$COMPUTE_CAP" \
  cargo check --release --workspace --features cuda --all-targets
