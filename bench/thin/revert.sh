#!/usr/bin/env bash
# Compiles and runs the revert-at-scale benchmark (--quick for a smaller run, --no-docs to leave
# docs/benchmarks.md alone).
set -euo pipefail
cd "$(dirname "$0")/../.."
npx tsc -p bench/thin/tsconfig.json
exec node dist/thin-bench/bench/thin/revert.js "$@"
