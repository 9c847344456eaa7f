#!/usr/bin/env bash
# Create the Python environment of the interop peers:
#   tests/interop/setup-venv.sh            -> prints the path of its python on the last line
# The environment lives in ${CARGO_TARGET_DIR:-target}/pyenv and is reused while
# requirements.txt is unchanged. Exits non-zero, loudly, when PyPI cannot be reached.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
venv=$target/pyenv
stamp=$venv/.requirements
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$here/requirements.txt" "$stamp"; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    if ! "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"; then
        echo "setup-venv: FAILED to install the interop peers from PyPI (see above)" >&2
        exit 1
    fi
    cp "$here/requirements.txt" "$stamp"
fi
echo "$venv/bin/python"
