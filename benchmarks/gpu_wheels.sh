#!/usr/bin/env bash
# Wheels of the packages archforge's GPU checks need that a bare GPU machine with PyTorch lacks, into .whl/
# (ignored by git), for machines that reach no package registry. Run it where pip reaches PyPI, in the
# repository's root; benchmarks/gpu_checks.sh installs them there from .whl/ when the folder travels with it.
# The versions are those this project is tested with; the machine's Python is 3.12 (change PY otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-3.12}
exclude=$(git rev-parse --git-path info/exclude)
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
for pkg in omegaconf==2.4.0 pycocotools==2.0.11 addict==2.4.0 lmdb==3.0.0 yapf==0.43.0 platformdirs==4.14.9 \
           future==1.0.0; do
  python -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    "${platforms[@]}" -d .whl "$pkg"
done
python -m pip wheel -q --no-deps --no-build-isolation -w .whl basicsr-fixed==1.4.2  # pure Python, sdist only
ls .whl
