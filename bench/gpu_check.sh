#!/usr/bin/env bash
# The train step on one GPU, ours vs TRL's DPOTrainer on the same tokens (bench/gpu_check.py):
#
#   bash bench/gpu_check.sh            # on a GPU machine, from the repository root or anywhere
#   bash bench/gpu_check.sh --cpu      # tiny config on the CPU in seconds (what the tests run)
#
# Arguments go to bench/gpu_check.py (--steps N, --sides ours,ours_dense,trl, --out FILE).
# Python: $PYTHON, else the project's .venv, else python3. When that Python lacks deepspeed or
# trl (a GPU machine with torch, transformers, peft and accelerate only, and no network), the
# wheels `make gpu-bundle` put in .cache/gpu-wheels ($TTPA_GPU_WHEELS) are installed into
# $TTPA_GPU_SITE (default /tmp/ttpa-gpu-site) and put first on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
WHEELS=${TTPA_GPU_WHEELS:-.cache/gpu-wheels}
SITE=${TTPA_GPU_SITE:-/tmp/ttpa-gpu-site}
export TTPA_CACHE_DIR=${TTPA_CACHE_DIR:-$ROOT/.cache} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import deepspeed, trl" >/dev/null 2>&1; then
  if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "gpu_check: $PY cannot import deepspeed and trl, and $WHEELS holds no wheels: run 'make gpu-bundle'" \
         "on a machine with network access and bring .cache/gpu-wheels along (or set TTPA_GPU_WHEELS)" >&2
    exit 2
  fi
  if [ ! -f "$SITE/.installed" ] || [ "$(ls "$WHEELS"/*.whl)" != "$(cat "$SITE/.installed")" ]; then
    rm -rf "$SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl
    ls "$WHEELS"/*.whl > "$SITE/.installed"
  fi
  export PYTHONPATH="$SITE:$PYTHONPATH"
  "$PY" -c "import deepspeed, trl" || {
    echo "gpu_check: deepspeed or trl still fails to import with the wheels of $WHEELS (above); the 'ours' side" \
         "needs deepspeed: rerun with --sides ours if only trl fails" >&2; }
fi
exec "$PY" bench/gpu_check.py "$@"
