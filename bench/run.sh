#!/usr/bin/env bash
# Benchmark harness entry point (called by `make bench`, which passes
# BENCH_ARGS here: make bench BENCH_ARGS="--duration 5").
# Installs the Debian packages the harness needs if any are missing, then runs
# bench/bench.py with the project's virtualenv, passing all arguments through.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

missing=()
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
{ command -v taskset && command -v prlimit; } >/dev/null 2>&1 || missing+=(util-linux)
command -v ps >/dev/null 2>&1 || missing+=(procps)

if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    echo "bench: installing missing packages: ${missing[*]}" >&2
    $sudo apt-get update -q
    if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        # nginx-light is a transitional package on some releases: fall back to nginx.
        fallback=("${missing[@]/nginx-light/nginx}")
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${fallback[@]}"
    fi
fi

python="${PYTHON:-.venv/bin/python}"
if [ ! -x "$python" ]; then
    echo "bench: $python not found; create the virtualenv first (make bench does)" >&2
    exit 2
fi
exec "$python" bench/bench.py "$@"
