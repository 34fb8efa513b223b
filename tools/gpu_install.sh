#!/usr/bin/env bash
# On the bare GPU machine (Python 3.12, torch 2.11 + CUDA 13 preinstalled, no package index):
# install the wheelhouse that tools/gpu_wheelhouse.py made, offline and without resolution
# (--no-deps: the exact set is requirements.lock's, whose header says why pip must not resolve it),
# next to the preinstalled torch, then check that everything imports and CUDA is seen.
#
#   tools/gpu_install.sh [DIR] [extra pip args, e.g. --user or --break-system-packages]
#   PY=/path/to/python tools/gpu_install.sh ...      # default: python3
set -euo pipefail
DIR=${1:-.wheelhouse}
shift || true
PY=${PY:-python3}
"$PY" -m pip install --no-index --no-deps --find-links "$DIR" -r "$DIR/requirements-gpu.txt" "$@"
# sample_factory.train pulls in the runner's tensorboardX/psutil/colorlog imports as well.
"$PY" -c "import nle, ale_py, gymnasium, sample_factory, sample_factory.train, torch; print('imports ok: torch', torch.__version__, '| cuda available:', torch.cuda.is_available())"
