#!/usr/bin/env bash
# What `npm test` and `npm run soak` need first: the system tools the tests drive, the
# native addon (built again when it is missing or older than any of its sources), and the
# TypeScript build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-tools.sh
addon=build/Release/blockmirror_native.node
if [ ! -f "$addon" ] || [ -n "$(find native binding.gyp -newer "$addon" -print -quit)" ]; then npm run install; fi
npx --no-install tsc -p tsconfig.json
