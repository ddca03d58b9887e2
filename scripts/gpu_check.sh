#!/usr/bin/env bash
# One-shot check on a CUDA machine (at most 8 minutes; no internet needed once the packages are installed):
#   1. install (scripts/install.sh) unless .venv exists;
#   2. scripts/gpu_check.py: gsplat's CUDA ops load (built on first use), gsplat vs our torch backend on the same
#      scene (images, alphas, radii, gradients, with tolerances), a 512 px frame timed on each, then a
#      reconstruction and a stylisation timed on both backends, printed as a table;
#   3. the CUDA tests of tests/test_render.py (they skip cleanly on machines without CUDA).
# Usage: bash scripts/gpu_check.sh [--out DIR] [--recon-steps N] [--style-steps N]   (arguments go to gpu_check.py)
set -uo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/install.sh || exit 1
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 400 .venv/bin/python scripts/gpu_check.py "$@"
check=$?
timeout 60 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_render.py -k "cuda" -rs
tests=$?
[ "$check" -eq 0 ] && [ "$tests" -eq 0 ] && echo "gpu_check.sh: OK" && exit 0
echo "gpu_check.sh: FAILED (gpu_check.py exit $check, CUDA tests exit $tests)" >&2
exit 1
