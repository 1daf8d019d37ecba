#!/usr/bin/env bash
# Runs the test suites with node:test via tsx, over explicit file lists (node --test with a
# directory finds no .ts files and passes with 0 tests).
# Usage: scripts/test.sh [unit|integration]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
files=()
if [ "$which" = all ] || [ "$which" = unit ]; then
  mapfile -t -O "${#files[@]}" files < <(find src -name '*.test.ts' | sort)
fi
if [ "$which" = all ] || [ "$which" = integration ]; then
  mapfile -t -O "${#files[@]}" files < <(find test -name '*.test.ts' | sort)
fi
if [ ${#files[@]} -eq 0 ]; then
  echo "test: no test files found" >&2
  exit 1
fi
exec node --import tsx --test --test-concurrency=2 --test-timeout=120000 "${files[@]}"
