#!/usr/bin/env bash
# Thin device vs plain file over our NBD server (fio's nbd engine); arguments go to thin.ts.
set -euo pipefail
cd "$(dirname "$0")/../.."
npm run --silent build
npx tsc -p bench/nbd/tsconfig.json
exec node dist/nbd-bench/bench/nbd/thin.js "$@"
