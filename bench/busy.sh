#!/usr/bin/env bash
# Run a command beside N competing CPU-bound processes (another user's jobs), then stop them.
#   bash bench/busy.sh 1 .venv/bin/python bench/bench_audit.py --threads 1
set -euo pipefail
n=${1:?usage: bench/busy.sh N COMMAND...}
shift
case $n in ''|*[!0-9]*) echo "busy.sh: N = '$n': expected a number of busy processes >= 0" >&2; exit 2;; esac
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for ((i = 0; i < n; i++)); do
  python3 -c "while True: pass" &
  pids+=($!)
done
"$@"
