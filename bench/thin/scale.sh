#!/usr/bin/env bash
# Compiles and runs the device-set-at-scale benchmark (CSI socket, 100,000 snapshots by default);
# arguments go to bench/thin/csi-scale.ts (--snapshots N, --no-docs, --profile DIR).
set -euo pipefail
cd "$(dirname "$0")/../.."
npm run --silent build
npx tsc -p bench/thin/tsconfig.json
exec node dist/thin-bench/bench/thin/csi-scale.js "$@"
