#!/usr/bin/env bash
# The GPU check, one command on a CUDA machine (see docs/performance.md for its last table):
#   1. the GPU tests (graph == eager for every objective, kernel in the loop, bf16, guided capture)
#   2. timings: floor, eager vs graph loop, bf16, fused kernel (radix-select thresholds) vs the same
#      with topk thresholds vs torch chain vs copy, 1000 classes
# A short run of the kernel alone: ONLY=kernel QUICK_KERNEL=1 SKIP_TESTS=1 bash bench/gpu_check.sh
# The EfficientNet-Lite0 packages travel as wheels in .whl/ when the machine lacks them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export CUBLAS_WORKSPACE_CONFIG=:4096:8  # deterministic cuBLAS for the graph == eager tests
if ! python3 -c "import efficientnet_lite_pytorch" 2>/dev/null && [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# fastviz.kernels is kernels/ (pyproject package-dir); without an install, link it in place.
if ! python3 -c "import fastviz.kernels" 2>/dev/null; then
  ln -sfn ../kernels fastviz/kernels
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
[ -n "${SKIP_TESTS:-}" ] || timeout "${TEST_TIMEOUT:-90}" python3 -m pytest -q -p no:cacheprovider -m gpu tests \
  --ignore=tests/kernels -s 2>&1 | tee "$OUT/pytest.txt" | grep -E "graph vs eager|passed|failed|Error|error" | tail -20
python3 bench/gpu_check.py --out "$OUT" --budget "${BUDGET:-200}" ${ONLY:+--only "$ONLY"} \
  ${QUICK_KERNEL:+--quick-kernel} 2>&1 | tee "$OUT/gpu_check.txt"
