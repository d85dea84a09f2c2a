#!/bin/bash
# Run the compiled fast path's tests with streams/_fastpath.c built under AddressSanitizer and UBSan.
# Usage: tests/tools/asan_fastpath.sh [pytest args]   (default: the property tests that drive the extension)
# The installed extension is put back afterwards, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -gt 0 ] || set -- tests/test_input_properties.py tests/test_partitioning.py tests/test_bench_route.py
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
so=$("$PY" -c "import streams._fastpath as m; print(m.__file__)")
include=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
work=$(mktemp -d)
cp "$so" "$work/installed.so"
trap 'cp "$work/installed.so" "$so"; rm -rf "$work"' EXIT
gcc -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -shared -fPIC \
    -I"$include" streams/_fastpath.c -o "$work/asan.so"
cp "$work/asan.so" "$so"
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
ASAN_OPTIONS=detect_leaks=0 PYTHONMALLOC=malloc \
    "$PY" -m pytest -q -p no:cacheprovider "$@"
