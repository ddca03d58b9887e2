#!/usr/bin/env bash
# Set up (first run only) and run the offline CPU demo; extra arguments go to styleme3d-demo (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/styleme3d-demo ] || bash scripts/install.sh
exec .venv/bin/styleme3d-demo "$@"
