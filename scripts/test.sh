#!/usr/bin/env bash
# Run every test of Bulk Shift.
#
# Installs what the tests need (Debian: redis-server, chromium, chromium-driver,
# dataset-fashion-mnist, docker-compose; Python: the project with Label Studio 1.23.2,
# TensorFlow and the test tools, in .venv), then runs pytest. The pytest fixtures start
# a real Redis and a real Label Studio on free ports under a temporary folder, once for
# the whole run, and stop them at the end.
#
# Usage: ./scripts/test.sh [PYTEST ARGUMENTS]     e.g. ./scripts/test.sh -m "not integration"
set -euo pipefail
source "$(dirname "$0")/lib/bootstrap.sh"

ensure_debian_packages redis-server chromium chromium-driver dataset-fashion-mnist \
    docker-compose
ensure_venv "services,vgg16,test"

cd "$REPO_ROOT"
say "Running the tests"
exec "$PYTHON" -m pytest "$@"
