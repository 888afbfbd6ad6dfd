#!/usr/bin/env bash
# build-ollama-cuda.sh SRC_DIR OUT_DIR [CUDA_ARCH | layout]
# Lays out OUT_DIR/bin/ollama and OUT_DIR/lib/ollama/{CPU backends, cuda_v13/libggml-cuda.so}, which
# `ollama serve` discovers by itself (the log then says `library=CUDA`). SRC_DIR holds the CPU-only
# Ollama v0.24.0 build: ollama.xz (the binary), cpu-libs.tar.xz (lib/ollama/libggml-*.so) and
# src-ggml-v0.24.0.tar.xz (Ollama's own ggml sources at v0.24.0); with libggml-cuda.so.xz there too
# (built earlier on a host with the same CUDA major version), nothing is compiled. Otherwise the
# CUDA backend is built with nvcc and cmake: about 4 minutes on 16 cores for ARCH=90 (H100, H200).
# With `layout` in place of the architecture it only lays out the CPU-only server.
set -euo pipefail
SRC=$(cd "${1:?usage: build-ollama-cuda.sh SRC_DIR OUT_DIR [CUDA_ARCH]}" && pwd)
OUT=${2:?usage: build-ollama-cuda.sh SRC_DIR OUT_DIR [CUDA_ARCH]}; ARCH=${3:-90}
mkdir -p "$OUT/bin" "$OUT/lib/ollama/cuda_v13"
if [ ! -x "$OUT/bin/ollama" ]; then  # the CPU-only server first: it can create models while CUDA builds
    xz -dc "$SRC/ollama.xz" >"$OUT/bin/ollama.partial" && chmod +x "$OUT/bin/ollama.partial"
    tar -C "$OUT/lib/ollama" -xJf "$SRC/cpu-libs.tar.xz"
    mv "$OUT/bin/ollama.partial" "$OUT/bin/ollama"
fi
[ "$ARCH" = layout ] && exit 0
if [ -f "$SRC/libggml-cuda.so.xz" ]; then
    xz -dc "$SRC/libggml-cuda.so.xz" >"$OUT/lib/ollama/cuda_v13/libggml-cuda.so"
    echo "CUDA backend: prebuilt ($SRC/libggml-cuda.so.xz)"
    exit 0
fi
mkdir -p "$OUT/src"
tar -C "$OUT/src" -xJf "$SRC/src-ggml-v0.24.0.tar.xz"
cd "$OUT/src"
started=$(date +%s)
cmake -B build -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DOLLAMA_RUNNER_DIR=cuda_v13 >"$OUT/cmake-configure.log" 2>&1
cmake --build build -j"$(nproc)" --target ggml-cuda >"$OUT/cmake-build.log" 2>&1
cp -L "$(find build -name 'libggml-cuda.so' | head -1)" "$OUT/lib/ollama/cuda_v13/"
echo "CUDA backend: built in $(($(date +%s) - started)) s"
