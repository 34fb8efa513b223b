#!/usr/bin/env bash
# The GPU check (issue 20) on the lent GPU machine, in one command from the repository root:
# install the wheelhouse offline (tools/gpu_install.sh), then run benchmarks/gpu_check.py under
# `timeout 480` (8 minutes; the script budgets itself to ~7 and writes its JSON after every
# section, so a run the timeout kills still leaves what it finished).
#
# Here, first (needs PyPI; the wheelhouse is git-ignored, so carry it to the device):
#   python tools/gpu_wheelhouse.py .wheelhouse
# There:
#   bash benchmarks/gpu_check.sh                       # -> $OUT/gpu.json (or benchmarks/results/gpu.json without $OUT)
#   bash benchmarks/gpu_check.sh --sections sac,appo   # extra arguments go to gpu_check.py
#
# Environment: WHEELHOUSE (default .wheelhouse), PY (default python3), PIP_ARGS (extra pip install
# arguments, e.g. --break-system-packages), OUT (where gpu.json goes).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELHOUSE=${WHEELHOUSE:-.wheelhouse}
PY=${PY:-python3}
DEST=${OUT:-benchmarks/results}
mkdir -p "$DEST"
# A failed install or import check does not stop the run: the sections that need a missing
# package are recorded as skipped or failed, and the others still give their figures.
# shellcheck disable=SC2086  # PIP_ARGS is a list of words
PY="$PY" bash tools/gpu_install.sh "$WHEELHOUSE" ${PIP_ARGS:-} \
    || echo "gpu_check.sh: tools/gpu_install.sh failed (exit $?); running the check anyway" >&2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec timeout -k 10 480 "$PY" benchmarks/gpu_check.py --out "$DEST/gpu.json" "$@"
