#!/usr/bin/env bash
# The GPU check (issue 17) on a CUDA machine with no network, in under 8 minutes in all:
#
#   scripts/gpu_wheels.sh                   # first, here: the missing wheels into .whl/
#   scripts/gpu_check.sh OUT_DIR [--parts tests,recipe,bench]     # there
#
# Installs the carried wheels, then scripts/gpu_check.py runs the parts and prints one table;
# the logs, gpu_check.json and summary.md land in OUT_DIR. Exit status 0 when every step passed.
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT_DIR [gpu_check.py options]}
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
budget=${GPU_CHECK_SECONDS:-470}  # under 8 minutes, the wheels' install included
# The folder's name must contain "site-packages": dill (datasets hashes with it) pickles a
# module found elsewhere by value, and pyarrow's then fails ("Can't pickle MonthDayNano").
site=/tmp/seq2seq-gpu/site-packages

# The machine's python3 is itself a virtual environment: one made from it with
# --system-site-packages would see the base interpreter's packages, not its torch. So the wheels
# go into a folder put first on PYTHONPATH (over the machine's own pyarrow and fsspec), and this
# checkout is imported from where it is, without installing it.
if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$site" .whl/*.whl >"$out/setup.log" 2>&1 \
        || echo "gpu_check: installing the carried wheels failed: see $out/setup.log" >&2
else
    echo "gpu_check: no .whl/ here (scripts/gpu_wheels.sh makes it); using what is installed" \
        >"$out/setup.log"
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1  # nothing reaches the network
# What pip finds at odds among the installed versions: for reading, not a reason to stop.
"$python" -m pip check >>"$out/setup.log" 2>&1
exec "$python" scripts/gpu_check.py "$out" --budget $((budget - SECONDS)) "$@"
