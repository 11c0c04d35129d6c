#!/usr/bin/env bash
# `npm run soak -- --minutes N`: the long crash soak (test/faults/soak.ts), after the same
# preparation as `npm test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prepare.sh
exec node dist/test/faults/soak.js "$@"
