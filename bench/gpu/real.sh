#!/usr/bin/env bash
# The headline claims on a real Ollama on one NVIDIA GPU, in one command:
#   bash bench/gpu/real.sh PHASE...        (loads churn coldstart overload prefix; results in $OUT)
# Needs, beside the checkout: .gpu-carry/ (see build-ollama-cuda.sh) and, where the host lacks orjson,
# uvicorn or gguf, their wheels in .whl/. Lays out Ollama with its CUDA backend under $WORK (kept for
# the next call on the same host), starts the ballast that leaves $LEAVE_GIB GiB of the card to
# models, then runs bench/gpu/real_ollama.py. $LIMIT bounds the whole call (seconds).
set -uo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s)
OUT=${OUT:-bench/results/gpu-real}
WORK=${WORK:-/root/ollama-gpu}
LEAVE_GIB=${LEAVE_GIB:-20}
LIMIT=${LIMIT:-570}
mkdir -p "$OUT" "$WORK"
if ! python3 -c 'import orjson, uvicorn, gguf, msgspec, aiohttp' 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# The CPU-only server at once; the CUDA backend (carried, or built here) in the background meanwhile.
bash bench/gpu/build-ollama-cuda.sh .gpu-carry "$WORK/dist" layout || exit 1
BUILD=
if [ ! -f "$WORK/dist/lib/ollama/cuda_v13/libggml-cuda.so" ]; then
    bash bench/gpu/build-ollama-cuda.sh .gpu-carry "$WORK/dist" 90 >"$OUT/build.txt" 2>&1 &
    BUILD=$!
fi
# The models store: the root disk when it has room, else memory (then no load reads the disk).
STORE=${STORE:-}
if [ -z "$STORE" ]; then
    avail=$(df --output=avail -B1G "$WORK" | tail -1 | tr -d ' ')
    if [ -d "$WORK/models" ] || [ "$avail" -ge 52 ]; then STORE="$WORK/models"; else STORE=/dev/shm/ollama-models; fi
fi
if ! pgrep -f "real_ollama.py ballast" >/dev/null; then
    rm -f "$WORK/ballast.json"
    setsid nohup python3 bench/gpu/real_ollama.py ballast --leave-gib "$LEAVE_GIB" --probe-out "$WORK/ballast.json" \
        >"$WORK/ballast.log" 2>&1 </dev/null &
    for _ in $(seq 600); do [ -s "$WORK/ballast.json" ] && break; sleep 0.1; done
    if [ ! -s "$WORK/ballast.json" ] && command -v nvidia-smi >/dev/null; then
        echo "the ballast did not start:"; cat "$WORK/ballast.log"; exit 1
    fi
fi
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv
    echo "store $STORE"; df -hT "$STORE" "$WORK" | tail -n +2; free -g | head -2; nproc
    python3 -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
    echo "ballast:"; cat "$WORK/ballast.json" 2>/dev/null || cat "$WORK/ballast.log"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
ARGS=(--out "$OUT" --store "$STORE" --binary "$WORK/dist/bin/ollama" --usable "$LEAVE_GIB")
if [ -n "$BUILD" ]; then  # make the models while the build runs, then wait for it
    python3 bench/gpu/real_ollama.py run "$@" "${ARGS[@]}" --models-only || exit 1
    wait "$BUILD" || { cat "$OUT/build.txt"; tail -30 "$WORK/dist/cmake-build.log"; exit 1; }
    cat "$OUT/build.txt"
fi
cuda_seen() {  # does `ollama serve` find the GPU through the CUDA backend?
    OLLAMA_HOST=127.0.0.1:11999 OLLAMA_MODELS="$WORK/probe-models" OLLAMA_NO_CLOUD=1 HOME="$WORK" \
        "$WORK/dist/bin/ollama" serve >"$WORK/probe.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do grep -q "inference compute" "$WORK/probe.log" && break; sleep 0.2; done
    kill "$pid"; wait "$pid" 2>/dev/null
    grep -m1 "inference compute" "$WORK/probe.log"
    grep -q "library=CUDA" "$WORK/probe.log"
}
if command -v nvidia-smi >/dev/null && ! cuda_seen; then  # a carried build that does not load: build here
    rm -f "$WORK/dist/lib/ollama/cuda_v13/libggml-cuda.so"
    mkdir -p "$WORK/src-only" && cp .gpu-carry/ollama.xz .gpu-carry/cpu-libs.tar.xz .gpu-carry/src-ggml-v0.24.0.tar.xz "$WORK/src-only/"
    bash bench/gpu/build-ollama-cuda.sh "$WORK/src-only" "$WORK/dist" 90 | tee -a "$OUT/build.txt" || exit 1
    cuda_seen || { cat "$WORK/probe.log"; exit 1; }
fi
python3 bench/gpu/real_ollama.py run "$@" "${ARGS[@]}" --deadline $((LIMIT - 25 - ($(date +%s) - T0)))
status=$?
if [ -n "$BUILD" ] && [ ! -f .gpu-carry/libggml-cuda.so.xz ]; then  # bring the build back for the next host
    xz -T0 -6 -c "$WORK/dist/lib/ollama/cuda_v13/libggml-cuda.so" >"$OUT/libggml-cuda.so.xz"
    [ "$(stat -c %s "$OUT/libggml-cuda.so.xz")" -le 16000000 ] || rm -f "$OUT/libggml-cuda.so.xz"
fi
grep -h -m3 -E "inference compute|load_backend" "$OUT"/logs/*.log 2>/dev/null | head -4
[ -d "$OUT/logs" ] && tar -C "$OUT" -cJf "$OUT/logs.tar.xz" logs && rm -rf "$OUT/logs"
ls -la "$OUT"
exit $status
