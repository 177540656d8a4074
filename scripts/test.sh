#!/usr/bin/env bash
# make test: every test in two passes. Most tests share the machine well and run in parallel, one by one over
# the workers (--dist loadgroup; tests/conftest.py keeps the tests of a module-scoped fixture, a running
# Prometheus or VictoriaMetrics, on one worker so that it starts once). The `quiet` ones assert what
# a simulated GPU measured while a real trainer ran: its load is the trainer's CPU use, so they run afterwards,
# one at a time, on an otherwise idle machine.
# Usage: scripts/test.sh PYTHON WORKERS [pytest arguments...]
set -uo pipefail
python=$1 workers=$2
shift 2
status=()
"$python" -m pytest -n "$workers" --dist loadgroup -m "not quiet" "$@"; status+=($?)
"$python" -m pytest -p no:xdist -m quiet "$@"; status+=($?)
# 5 is pytest's "no tests collected": fine for one pass (a selection with no quiet test), not for both
if [[ ${status[0]} -eq 5 && ${status[1]} -eq 5 ]]; then
    echo "make test: no tests collected (PYTEST_ARGS=$*)" >&2
    exit 5
fi
for rc in "${status[@]}"; do
    if [[ $rc -ne 0 && $rc -ne 5 ]]; then exit "$rc"; fi
done
