#!/usr/bin/env bash
# Run one pytest node N times in a row, optionally with a busy-loop process holding one core, and stop
# at the first failure (its output is kept in $LOG_DIR). Used to prove a test is not flaky:
#   tests/tools/repeat_test.sh 30 --load "tests/test_stream_e2e.py::test_sigkilled_worker_restarts_without_losing_or_double_counting"
# VENV (default .venv) names the virtual environment, so a snapshot of the tree can use the main one.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
export PYTHONPATH=$PWD
runs=${1:?usage: repeat_test.sh N [--load] PYTEST_NODE...}
shift
load=0
if [[ "${1:-}" == "--load" ]]; then load=1; shift; fi
LOG_DIR=${LOG_DIR:-run/repeat}
mkdir -p "$LOG_DIR"
burner=""
if (( load )); then
    python3 -c 'while True: pass' &
    burner=$!
    trap 'kill $burner 2>/dev/null || true' EXIT
fi
for i in $(seq 1 "$runs"); do
    start=$(date +%s)
    if "$VENV/bin/pytest" -q -p no:cacheprovider "$@" > "$LOG_DIR/run-$i.log" 2>&1; then
        echo "run $i/$runs passed in $(( $(date +%s) - start )) s"
    else
        echo "run $i/$runs FAILED after $(( $(date +%s) - start )) s; log: $LOG_DIR/run-$i.log"
        exit 1
    fi
done
echo "all $runs runs passed (load: $load)"
