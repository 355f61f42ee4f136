#!/usr/bin/env bash
# Compiles and runs the thin-pool engine benchmark; arguments go to bench/thin/engine.ts
# (--quick for a smaller run, --no-docs to leave docs/benchmarks.md alone).
set -euo pipefail
cd "$(dirname "$0")/../.."
npx tsc -p bench/thin/tsconfig.json
node dist/thin-bench/bench/pdata/crc32c.js
exec node dist/thin-bench/bench/thin/engine.js "$@"
