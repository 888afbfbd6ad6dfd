#!/usr/bin/env bash
# The GPU proof in one command, on a host with an NVIDIA GPU, PyTorch and nvidia-ml-py:
#   bash bench/gpu/run.sh [run.py options]        results in $OUT (default bench/results/gpu)
# Wheels under .whl/ (orjson, uvicorn, pytest-asyncio, when the host lacks them) go to /tmp/site first;
# then bench/gpu/run.py, then the GPU-marked tests. Exits non-zero if either fails.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-bench/results/gpu}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
if ! "$PY" -c 'import orjson, uvicorn, pytest_asyncio' 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>&1
    df -hT "${OLLAMA_ASGI_WEIGHTS_DIR:-$HOME}" 2>&1 | tail -1
    free -g 2>&1 | head -2
    "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
} 2>&1 | tee "$OUT/log.txt"
"$PY" bench/gpu/run.py --out "$OUT" "$@" 2>&1 | tee -a "$OUT/log.txt"
bench=${PIPESTATUS[0]}
# Third-party warnings (torch, NVML bindings) must not fail the run; the project's own settings stay.
"$PY" -m pytest -q -p no:cacheprovider -m gpu tests/bench/gpu --confcutdir=tests/bench/gpu \
    -W ignore::UserWarning -W ignore::FutureWarning 2>&1 | tee -a "$OUT/log.txt"
tests=${PIPESTATUS[0]}
echo "bench exit $bench, gpu tests exit $tests" | tee -a "$OUT/log.txt"
exit $((bench || tests))
