#!/usr/bin/env bash
# Stop every process ./scripts/up.sh started (by the PIDs it recorded in
# <data dir>/stack.json). Data, projects and cached features stay.
#
# Usage: ./scripts/down.sh [--data-dir DIR]      (default ./var or BULKSHIFT_DATA_DIR)
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${BULKSHIFT_VENV:-$REPO_ROOT/.venv}/bin/python"
exec "$PYTHON" -m bulkshift.stack.run down "$@"
