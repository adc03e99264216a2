#!/usr/bin/env bash
# Build (or reuse) .venv-interop: transformers alone, as a downstream user has it, for
# tests/vlm_vision/export/test_interop.py. torch 2.14.1 + torchvision 0.29.1 are pinned because the
# registry's torchvision only loads next to the registry's torch, and the CPU torch 2.13.0 on this
# machine's disk is the main venv's. transformers is pinned to the main venv's version.
# Usage: bash .ci/interop_env.sh [MAIN_PYTHON]   (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
main_python="${1:-.venv/bin/python}"
env_dir=.venv-interop
tf_version="$("$main_python" -c 'import importlib.metadata as m; print(m.version("transformers"))')"
want="torch==2.14.1 torchvision==0.29.1 transformers==${tf_version}"
have_versions() {
    "$env_dir/bin/python" - "$@" <<'PY' 2>/dev/null
import importlib.metadata as m, sys
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    if m.version(name).split("+")[0] != version:
        sys.exit(1)
for name in ("av", "PIL", "numpy", "jinja2", "torchvision", "transformers"):
    __import__(name)
PY
}
# shellcheck disable=SC2086
if [ -x "$env_dir/bin/python" ] && have_versions $want; then
    echo "interop env: reusing $env_dir ($want)"
    exit 0
fi
rm -rf "$env_dir"
python3 -m venv "$env_dir"
# shellcheck disable=SC2086
"$env_dir/bin/pip" install -q $want av pillow numpy jinja2
# shellcheck disable=SC2086
have_versions $want
echo "interop env: built $env_dir ($want)"
