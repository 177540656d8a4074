#!/usr/bin/env bash
# Ensures the system binaries the stack and its tests use (Prometheus, promtool, Alertmanager, amtool,
# VictoriaMetrics).
# As root on Debian/Ubuntu it installs them with apt; otherwise it prints the one command to run.
set -euo pipefail
missing=()
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
{ command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1; } \
    && command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
# Long-term storage: tests/test_stack_longterm.py remote_writes to a real VictoriaMetrics.
{ command -v victoria-metrics >/dev/null 2>&1 || command -v victoria-metrics-prod >/dev/null 2>&1; } \
    || missing+=(victoria-metrics)
[ ${#missing[@]} -eq 0 ] && exit 0
cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: installing ${missing[*]} with apt" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Installing must not start the packaged services: the stack runs its own instances on loopback.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1; fi
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ "$created_policy" = 1 ] && rm -f "$policy"
    exit 0
fi
echo "system-deps: missing ${missing[*]}; install with: sudo $cmd" >&2
exit 1
