#!/usr/bin/env bash
# `npm run soak -- --minutes N`: the long crash soak (test/faults/soak.ts), with the same
# preparation as `npm test` (system tools, native addon, build).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-tools.sh
# The addon is built again when it is missing or older than any of its sources.
addon=build/Release/blockmirror_native.node
if [ ! -f "$addon" ] || [ -n "$(find native binding.gyp -newer "$addon" -print -quit)" ]; then npm run install; fi
npx --no-install tsc -p tsconfig.json
exec node dist/test/faults/soak.js "$@"
