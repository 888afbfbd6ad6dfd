#!/usr/bin/env bash
# Installs the system programs that the tests or benchmarks start themselves, from Debian's packages,
# when they are missing:
#   ensure-system-deps.sh test    a private redis-server on a free port, headless Chromium for the status page,
#                                 Node.js and npm for the npm ollama client
#   ensure-system-deps.sh bench   the same, and valgrind for the instruction-count benchmark
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)  # the npm ollama client in the real-Ollama suite
if [ "${1:-test}" = bench ]; then
    command -v callgrind_control >/dev/null 2>&1 || need+=(valgrind)
fi
if ((${#need[@]})); then
    echo "installing: ${need[*]}"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
