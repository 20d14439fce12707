#!/usr/bin/env bash
# Runs the worker under callgrind: `apns-bench bench --drain-only --rate 0 --jobs 20000
# --worker-bin crates/apns-bench/callgrind-worker.sh`. Instruction counts do not move with the
# machine's load, so two builds can be compared on a busy or slow machine (wall-clock
# and CPU figures of the same binary moved 1.7-3x between days here).
#   WORKER        the worker binary (default: target/release/apns-worker)
#   CALLGRIND_OUT the profile (default: /tmp/callgrind.worker.<pid>)
# Read it with `callgrind_annotate --inclusive=yes <file>`; divide by the jobs drained.
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
exec valgrind --tool=callgrind --callgrind-out-file="${CALLGRIND_OUT:-/tmp/callgrind.worker.%p}" \
  "${WORKER:-$here/target/release/apns-worker}" "$@"
