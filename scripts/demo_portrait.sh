#!/usr/bin/env bash
# Offline CPU portrait demo (sas-portrait on scikit-image's astronaut); extra arguments go to styleme3d-demo-portrait.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/styleme3d-demo-portrait ] || bash scripts/install.sh
exec .venv/bin/styleme3d-demo-portrait "$@"
