#!/usr/bin/env bash
# `npm test`: install missing system tools, type-check and build, then run every test
# (unit, codec and fuzz, integration with real processes, interop with real clients).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prepare.sh
mapfile -t files < <(find dist/src dist/test -name '*.test.js' | sort)
# Files run one at a time: the interop tests start servers and clients that each want
# the machine's two cores. Every test has its own timeout as well.
exec node --test --test-concurrency=1 --test-timeout=300000 --test-reporter=spec "${files[@]}" "$@"
