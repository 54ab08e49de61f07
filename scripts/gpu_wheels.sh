#!/usr/bin/env bash
# Downloads, here (with network), the wheels that the GPU machine's Python 3.12 lacks into .whl/,
# which git ignores and the device tool's `carry` takes along; scripts/gpu_check.sh installs
# them there. The versions are those of this checkout's .venv, where the tests pass with them.
#
#   scripts/gpu_wheels.sh          # then: carry [".whl"], run scripts/gpu_check.sh "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
dest=.whl
# Lacking there: datasets (the corpus is a datasets.Dataset, local files too) with dill and
# multiprocess; jsonargparse with its signatures extra (the training CLI). Present there at a
# version datasets may refuse: pyarrow (datasets needs a recent one), fsspec (datasets caps it).
packages=(datasets dill multiprocess pyarrow fsspec jsonargparse docstring_parser typeshed_client)

pins=$("$python" -c 'import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))' "${packages[@]}")
rm -rf "$dest"
# shellcheck disable=SC2086  # one argument per pin
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --dest "$dest" $pins

# What travels: the working tree (tracked and untracked-not-ignored files) plus the carried
# folder, 64 MiB at most.
size='import os, sys
print(sum(os.lstat(p).st_size for p in sys.stdin.read().split("\0") if os.path.lexists(p)))'
tree=$(git ls-files -z --cached --others --exclude-standard | "$python" -c "$size")
wheels=$(printf '%s\0' "$dest"/*.whl | "$python" -c "$size")
mib() { echo "$(( $1 / 1048576 )) MiB"; }
echo "wheels: $(mib "$wheels") in $dest; working tree: $(mib "$tree"); together" \
    "$(mib $((tree + wheels))) of the 64 MiB that may travel"
if (( tree + wheels > 64 * 1048576 )); then
    echo "too large to travel" >&2
    exit 1
fi
