#!/usr/bin/env bash
# Installs the system programs the test suite starts itself (a private redis-server on a free port,
# headless Chromium for the status page, valgrind for the instruction-count benchmark's smoke test),
# from Debian's packages, when they are missing.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v callgrind_control >/dev/null 2>&1 || need+=(valgrind)
if ((${#need[@]})); then
    echo "installing: ${need[*]}"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
