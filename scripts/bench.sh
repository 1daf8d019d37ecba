#!/usr/bin/env bash
# Runs the benchmarks by hand (not in CI): builds, then each bench/*.ts that is a benchmark.
# Each prints its figures and ends with a `name: value unit` line.
# Usage: scripts/bench.sh [name ...]   (default: all; names as in bench/NAME.ts)
set -euo pipefail
cd "$(dirname "$0")/.."
npm run --silent build
benches=("$@")
if [ ${#benches[@]} -eq 0 ]; then
  benches=(admin-vm-list qvm-ls qube-start many-qubes policy qrexec network)
fi
status=0
for b in "${benches[@]}"; do
  echo "== $b"
  node --import tsx "bench/$b.ts" || status=1
done
exit $status
