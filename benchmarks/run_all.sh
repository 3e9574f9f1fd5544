#!/usr/bin/env bash
# Run every benchmark; each prints one JSON line per figure on stdout (diagnostics on
# stderr). Extra arguments (e.g. --dir /some/disk or --profile) go to every script.
# Exits non-zero only if a script fails, not if a figure misses its target ("ok": false).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-$here/../.venv/bin/python}"
[ -x "$py" ] || py=python3
for bench in executor_overhead event_append readback memory dask_overhead pg_append; do
    start=$(date +%s)
    "$py" "$here/$bench.py" "$@"
    echo "[$bench] $(( $(date +%s) - start )) s" >&2
done
