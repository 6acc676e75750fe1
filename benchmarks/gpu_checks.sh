#!/usr/bin/env bash
# The GPU checks in one call on a machine with one CUDA GPU: the CUDA tests (every one-shot searcher, the
# DARTS CUDA graphs against the eager search, every task's final training), then benchmarks/gpu_throughput.py.
# Logs and tables go to $OUT (default ./gpu-results). Packages missing there come from .whl/ (see
# benchmarks/gpu_wheels.sh). Ends within about 7.6 minutes: TEST_TIMEOUT (170 s) + BENCH_BUDGET (230 s: no new
# benchmark row after it; torch.compile only with 100 s left) + 45 s for the row in flight + the installs.
# QUICK=1 times fewer steps.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 ARCHFORGE_NO_PROGRESS=1 MPLBACKEND=Agg PYTHONPATH=$PWD
PYTHON=${PYTHON:-python3}
if [ -d .whl ]; then
  $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PYTHON -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/gpu.txt"
timeout "${TEST_TIMEOUT:-170}" $PYTHON -m pytest tests/test_devices.py -m cuda -q -p no:cacheprovider --timeout 160 \
  2>&1 | tee "$OUT/cuda_tests.log"
echo "cuda tests exit: ${PIPESTATUS[0]}" | tee -a "$OUT/cuda_tests.log"
timeout $(( ${BENCH_BUDGET:-230} + 45 )) $PYTHON benchmarks/gpu_throughput.py --budget-s "${BENCH_BUDGET:-230}" \
  ${QUICK:+--quick} --out "$OUT/gpu_throughput.md" 2>&1 | tee "$OUT/gpu_throughput.log"
echo "benchmark exit: ${PIPESTATUS[0]}" | tee -a "$OUT/gpu_throughput.log"
