# Shared setup for scripts/up.sh and scripts/test.sh: sourced, not run.
#
# Installs the Debian packages the product uses (when missing and when we may), and a
# virtual environment in .venv with this project and its Python dependencies. Both
# steps are skipped when already done, so a second run starts in seconds.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${BULKSHIFT_VENV:-$REPO_ROOT/.venv}"
PYTHON="$VENV/bin/python"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# ensure_debian_packages PACKAGE... : apt-get install the missing ones.
ensure_debian_packages() {
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
            || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0

    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null; then
            sudo="sudo"
        else
            echo "error: these Debian packages are missing: ${missing[*]}" >&2
            echo "Install them as root (apt-get install ${missing[*]}) and rerun." >&2
            return 1
        fi
    fi
    say "Installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" \
        >/dev/null
}

# ensure_venv EXTRAS : create .venv and install the project with those extras.
# A stamp file records what was installed, so an unchanged pyproject skips pip.
ensure_venv() {
    local extras="$1"
    local python_bin="${BULKSHIFT_PYTHON:-python3}"
    if ! "$python_bin" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
    then
        echo "error: Python 3.11 or newer is needed; '$python_bin' is" \
            "$("$python_bin" --version 2>&1 || echo missing)." >&2
        echo "Install python3.11 (or set BULKSHIFT_PYTHON=/path/to/python3.11)." >&2
        return 1
    fi
    if [ ! -x "$PYTHON" ]; then
        say "Creating the virtual environment $VENV"
        "$python_bin" -m venv "$VENV" || {
            echo "error: could not create a venv; on Debian/Ubuntu install" \
                "python3-venv (apt-get install python3-venv) and rerun." >&2
            return 1
        }
    fi

    local stamp="$VENV/.bulkshift-installed"
    local wanted
    wanted="$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -c1-16) [$extras]"
    if [ -f "$stamp" ] && grep -qxF "$wanted" "$stamp"; then
        return 0
    fi
    say "Installing Python packages into $VENV (first time: a few minutes, ~3 GB)"
    "$PYTHON" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
    # PYTHONWARNINGS: setuptools prints a banner about editable installs otherwise.
    PYTHONWARNINGS=ignore "$PYTHON" -m pip install -q -e "$REPO_ROOT[$extras]" 2>&1 \
        | grep -v "^WARNING: Location" >&2 || true
    # pip's own status is lost in the pipe above: check the result directly.
    "$PYTHON" -c "import bulkshift, label_studio_sdk, sklearn" || {
        echo "error: installing the Python packages failed; see the messages above." >&2
        return 1
    }
    echo "$wanted" >"$stamp"
}
