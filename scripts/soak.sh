#!/usr/bin/env bash
# `npm run soak -- --minutes N`: the long crash soak (test/faults/soak.ts), with the same
# preparation as `npm test` (system tools, native addon, build).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-tools.sh
[ -f build/Release/blockmirror_native.node ] || npm run install
npx --no-install tsc -p tsconfig.json
exec node dist/test/faults/soak.js "$@"
