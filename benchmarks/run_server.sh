#!/usr/bin/env bash
# Run the server benchmarks (a real jupyter server subprocess each); one JSON line per
# figure on stdout, diagnostics on stderr. Extra arguments (e.g. --profile) go to every
# script. Exits non-zero only if a script fails, not if a figure misses its target.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-$here/../.venv/bin/python}"
[ -x "$py" ] || py=python3
for bench in server_throughput server_latency server_fanout server_replay server_memory server_store_size server_replicas; do
    start=$(date +%s)
    "$py" "$here/$bench.py" "$@"
    echo "[$bench] $(( $(date +%s) - start )) s" >&2
done
