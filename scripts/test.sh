#!/usr/bin/env bash
# make test: every test in two passes. Most tests share the machine well and run in parallel (pytest-xdist; the
# scheduler in tests/conftest.py gives each module to one worker whole, so that its Prometheus or VictoriaMetrics
# fixture starts once, and spreads the calibration simulations test by test). The `quiet` ones assert what a
# simulated GPU measured while a real trainer ran: its load is the trainer's CPU use, so they run afterwards, one
# at a time, on an otherwise idle machine.
# Usage: scripts/test.sh PYTHON WORKERS [pytest arguments...]
# Arguments that choose marks, workers or plugins themselves (-m, -n, -p) get one plain pytest run instead.
set -uo pipefail
python=$1 workers=$2
shift 2
for arg in "$@"; do
    case $arg in
        -m|-m*|-n|-n*|--numprocesses*|-p|-p*|--dist*) exec "$python" -m pytest "$@" ;;
    esac
done
# auto: the CPUs this process may use, plus one. The pass waits on real processes (a 75-s recording, a stack
# starting) as much as it computes: on 2 cores a third worker took it from 12:05 to 10:15 (a fourth: 10:00).
if [[ $workers == auto ]]; then
    workers=$(( $(nproc) + 1 ))
fi
status=()
"$python" -m pytest -n "$workers" -m "not quiet" "$@"; status+=($?)
# 2: interrupted, 3: internal error, 4: usage error: the second pass would only repeat it
case ${status[0]} in 2|3|4) exit "${status[0]}" ;; esac
"$python" -m pytest -p no:xdist -m quiet "$@"; status+=($?)
# 5 is pytest's "no tests collected": fine for one pass (a selection with no quiet test), not for both
if [[ ${status[0]} -eq 5 && ${status[1]} -eq 5 ]]; then
    echo "make test: no tests collected (PYTEST_ARGS=$*)" >&2
    exit 5
fi
for rc in "${status[@]}"; do
    if [[ $rc -ne 0 && $rc -ne 5 ]]; then exit "$rc"; fi
done
