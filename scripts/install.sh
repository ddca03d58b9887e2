#!/usr/bin/env bash
# Set up styleme3d-ns on a fresh CPU or CUDA machine: system libraries, a venv in .venv, the package.
set -euo pipefail
cd "$(dirname "$0")/.."

# open3d (nerfstudio's ply loading) needs libusb; ns-render writes videos with ffmpeg; the browser test drives chromium.
need=()
ldconfig -p 2>/dev/null | grep -q "libusb-1.0.so.0" || need+=(libusb-1.0-0)
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test,guidance,portrait,style,batch]"
# Optional, with npm: PlayCanvas' splat converter (a reader we did not write; tests/test_ply_scene.py checks exports
# with it) and PlayCanvas' engine, pinned: `styleme3d-export --web` copies it into every page (docs/web.md).
if command -v npm >/dev/null 2>&1; then
  npm install --silent --no-audit --no-fund --prefix .venv/node "@playcanvas/splat-transform@3" "playcanvas@2.23.3" \
    >/dev/null 2>&1 || echo "splat-transform and the PlayCanvas engine not installed (npm install failed): \
--web pages and the splat-transform test are unavailable"
else
  echo "npm not found: styleme3d-export --web needs it (apt-get install npm, then rerun scripts/install.sh)"
fi
# numba compiles the CPU rasteriser's kernels once and caches them: do it now rather than in the first run
.venv/bin/python -m styleme3d_ns.render.warm_kernels
echo "styleme3d-ns installed in $(pwd)/.venv (activate with: source .venv/bin/activate)"
