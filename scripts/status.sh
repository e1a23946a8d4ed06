#!/usr/bin/env bash
# Show which processes of ./scripts/up.sh run, and the projects it created.
#
# Usage: ./scripts/status.sh [--data-dir DIR]    (default ./var or BULKSHIFT_DATA_DIR)
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${BULKSHIFT_VENV:-$REPO_ROOT/.venv}/bin/python"
exec "$PYTHON" -m bulkshift.stack.run status "$@"
